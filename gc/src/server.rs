//! The `gc` link (`guix_ipc::gc`): each request is a job of the process's [`JobTable`], keyed by
//! the id socket-front chose, so a request sent again for a running job attaches to it. A
//! call that goes away detaches; when no call follows a job any more it is cancelled (a
//! collection stops between two batches and ends its collection). Every job sends
//! [`GcEvent::Alive`] every [`HEARTBEAT`]. One collection runs at a time; the next waits for
//! it, as a C++ collector waits for the GC lock.

use std::future::Future;
use std::sync::Arc;

use guix_ipc::gc::{GcEvent, GcReply, GcRequest, HEARTBEAT};
use guix_ipc::job::{JobContext, JobId, JobStatus, JobTable, Progress};
use guix_ipc::{Call, Handler, LinkError};

use crate::collect::{self, Limits, Request, Setup, Sink, StoreDbApi};

/// A job's lines go to whoever is attached.
impl Sink for JobContext<GcEvent> {
    fn say(&self, level: u32, text: String) {
        self.emit(GcEvent::Message { level, text });
    }
    fn cancelled(&self) -> bool {
        self.token().is_cancelled()
    }
}

pub struct Server<A> {
    api: Arc<A>,
    setup: Setup,
    limits: Limits,
    jobs: Arc<JobTable<GcEvent, GcReply>>,
    /// Held by the running collection.
    collecting: Arc<tokio::sync::Mutex<()>>,
}

impl<A: StoreDbApi + 'static> Server<A> {
    pub fn new(api: A, setup: Setup, limits: Limits) -> Arc<Server<A>> {
        Arc::new(Server {
            api: Arc::new(api),
            setup,
            limits,
            // A collection prints one line per deleted entry, as fast as store-db deletes them
            // (about 10,000 a second), and C++ shows every one: 65,536 events per attached
            // call (a few MB, allocated per job) so that a client reading at its usual pace
            // misses none (with 1,024, a 50,000-path collection lost a fifth of its lines).
            // A finished job keeps its buffer until it is forgotten: the last 4 are kept (a
            // resent request comes within seconds), so at most ~50 MB stay allocated.
            jobs: JobTable::new(1 << 16, 4),
            collecting: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The work of one request.
    fn work(
        self: &Arc<Self>,
        req: GcRequest,
    ) -> impl FnOnce(JobContext<GcEvent>) -> std::pin::Pin<Box<dyn Future<Output = GcReply> + Send>> {
        let me = self.clone();
        move |ctx| {
            Box::pin(async move {
                let ctx = Arc::new(ctx);
                let beat = {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let mut t = tokio::time::interval(HEARTBEAT);
                        t.tick().await;
                        loop {
                            t.tick().await;
                            ctx.emit(GcEvent::Alive);
                        }
                    })
                };
                let reply = me.run(req, &ctx).await;
                beat.abort();
                reply
            })
        }
    }

    async fn run(&self, req: GcRequest, ctx: &Arc<JobContext<GcEvent>>) -> GcReply {
        match req {
            GcRequest::Collect { action, paths, max_freed, ignore_liveness, keep, .. } => {
                let _one = tokio::select! {
                    g = self.collecting.clone().lock_owned() => g,
                    _ = ctx.token().cancelled() => return GcReply::Error(LinkError::retryable("the collection was cancelled")),
                };
                let req = Request { action, paths, max_freed, ignore_liveness, keep };
                match collect::collect(&*self.api, &self.setup, req, self.limits, &**ctx).await {
                    Ok(o) => GcReply::Collected { paths: o.paths, bytes_freed: o.bytes_freed },
                    Err(e) => GcReply::Error(e.to_link()),
                }
            }
            GcRequest::Optimise { .. } => {
                let setup = self.setup.clone();
                let sink = ctx.clone();
                let r =
                    tokio::task::spawn_blocking(move || crate::service::optimise(&setup, &mut |l, t| sink.say(l, t)))
                        .await;
                match r {
                    Ok(Ok(())) => GcReply::Optimised,
                    Ok(Err(e)) => GcReply::Error(e.to_link()),
                    Err(e) => GcReply::Error(LinkError::internal(format!("the optimisation failed: {e}"))),
                }
            }
        }
    }
}

fn job_of(req: &GcRequest) -> JobId {
    match req {
        GcRequest::Collect { job, .. } | GcRequest::Optimise { job } => job.clone(),
    }
}

impl<A: StoreDbApi + 'static> Handler for Server<A> {
    type Req = GcRequest;
    type Resp = GcReply;
    type Item = GcEvent;

    fn handle(self: &Arc<Self>, call: Call<GcEvent>, req: GcRequest) -> impl Future<Output = GcReply> + Send + 'static {
        let me = self.clone();
        async move {
            let job = job_of(&req);
            let panicked = GcReply::Error(LinkError::internal("the gc job failed unexpectedly"));
            let item = |p| match p {
                Progress::Output(e) => e,
                Progress::Skipped(n) => GcEvent::Skipped(n),
            };
            let work = me.work(req);
            let status = me.jobs.serve_call(&call, job, panicked, work, item).await;
            match status {
                JobStatus::Finished(reply) => reply,
                JobStatus::Running => GcReply::Error(LinkError::retryable("the request was cancelled")),
                JobStatus::Unknown => GcReply::Error(LinkError::internal("the gc job was lost")),
            }
        }
    }
}
