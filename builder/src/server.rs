//! The `builder` link (`guix_ipc::builder`): each `Build` is a job of the process's
//! [`JobTable`], keyed by the id socket-front chose, so a `Build` sent again for a running job
//! attaches to it instead of starting it twice. A call that goes away (its client disconnected)
//! detaches; when no call is attached any more the job is cancelled, which cancels the goals
//! only it wanted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use guix_ipc::builder::{BuildEvent, BuildReply, BuilderRequest};
use guix_ipc::job::{forward_attached, JobId, JobStatus, JobTable, Progress};
use guix_ipc::{Call, Handler, LinkError};

use crate::schedule::Builder;

pub struct Server {
    builder: Arc<Builder>,
    jobs: Arc<JobTable<BuildEvent, BuildReply>>,
    /// Calls attached to each running job.
    attached: Mutex<HashMap<JobId, usize>>,
}

impl Server {
    pub fn new(builder: Arc<Builder>) -> Arc<Server> {
        // 1024 events buffered per attached call; the results of the last 256 jobs kept for
        // calls that come back after a broken connection.
        Arc::new(Server { builder, jobs: JobTable::new(1024, 256), attached: Mutex::new(HashMap::new()) })
    }

    fn attach(&self, job: &JobId, delta: isize) -> usize {
        let mut a = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        let n = a.entry(job.clone()).or_insert(0);
        *n = (*n as isize + delta).max(0) as usize;
        let left = *n;
        if left == 0 {
            a.remove(job);
        }
        left
    }
}

impl Handler for Server {
    type Req = BuilderRequest;
    type Resp = BuildReply;
    type Item = BuildEvent;

    fn handle(
        self: &Arc<Self>,
        call: Call<BuildEvent>,
        req: BuilderRequest,
    ) -> impl Future<Output = BuildReply> + Send + 'static {
        let me = self.clone();
        async move {
            let BuilderRequest::Build { job, targets, mode, options } = req;
            me.attach(&job, 1);
            let b = me.builder.clone();
            let panicked = BuildReply::Error(LinkError::internal("the build job failed unexpectedly"));
            // Attached from the start: a job's first events come before any later attach.
            let (_, _, attached) =
                me.jobs.start_attached(Some(job.clone()), panicked, move |ctx| b.run_job(ctx, targets, mode, options));
            let item = |p| match p {
                Progress::Output(e) => e,
                Progress::Skipped(n) => BuildEvent::Skipped(n),
            };
            let status = match attached {
                None => JobStatus::Unknown,
                Some(attached) => tokio::select! {
                    s = forward_attached(attached, &call, item) => s,
                    _ = call.token().cancelled() => JobStatus::Running,
                },
            };
            if me.attach(&job, -1) == 0 && matches!(status, JobStatus::Running) {
                // Nobody follows it any more: its client went away.
                me.jobs.cancel(&job);
            }
            match status {
                JobStatus::Finished(reply) => reply,
                JobStatus::Running => BuildReply::Error(LinkError::retryable("the request was cancelled")),
                JobStatus::Unknown => BuildReply::Error(LinkError::internal("the build job was lost")),
            }
        }
    }
}
