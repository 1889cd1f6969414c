//! The `builder` link (`guix_ipc::builder`): each `Build` is a job of the process's
//! [`JobTable`], keyed by the id socket-front chose, so a `Build` sent again for a running job
//! attaches to it instead of starting it twice. A call that goes away (its client disconnected)
//! detaches; when no call is attached any more the job is cancelled, which cancels the goals
//! only it wanted.

use std::future::Future;
use std::sync::Arc;

use guix_ipc::builder::{BuildEvent, BuildReply, BuilderRequest};
use guix_ipc::job::{serve_start, Followers, JobStatus, JobTable, Progress};
use guix_ipc::{Call, Handler, LinkError};

use crate::schedule::Builder;

pub struct Server {
    builder: Arc<Builder>,
    jobs: Arc<JobTable<BuildEvent, BuildReply>>,
    followers: Followers,
}

impl Server {
    pub fn new(builder: Arc<Builder>) -> Arc<Server> {
        // 1024 events buffered per attached call; the results of the last 256 jobs kept for
        // calls that come back after a broken connection.
        Arc::new(Server { builder, jobs: JobTable::new(1024, 256), followers: Followers::default() })
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
            let b = me.builder.clone();
            let panicked = BuildReply::Error(LinkError::internal("the build job failed unexpectedly"));
            let item = |p| match p {
                Progress::Output(e) => e,
                Progress::Skipped(n) => BuildEvent::Skipped(n),
            };
            // Attached from the start: a job's first events come before any later attach.
            let work = move |ctx| b.run_job(ctx, targets, mode, options);
            let status = serve_start(&me.jobs, &me.followers, &call, job, panicked, work, item).await;
            match status {
                JobStatus::Finished(reply) => reply,
                JobStatus::Running => BuildReply::Error(LinkError::retryable("the request was cancelled")),
                JobStatus::Unknown => BuildReply::Error(LinkError::internal("the build job was lost")),
            }
        }
    }
}
