//! The `substituter` link (`guix_ipc::substituter`): `Query` answered at once, each
//! `Substitute` a job of the process's [`JobTable`] under the id its caller chose, so one sent
//! again for a running job attaches to it. When no call follows a job any more (its client
//! went away) it is cancelled.

use std::future::Future;
use std::sync::Arc;

use guix_ipc::job::{JobStatus, JobTable, Progress};
use guix_ipc::substituter::{SubstituteEvent, SubstituterReply, SubstituterRequest};
use guix_ipc::{Call, Handler, LinkError};

use crate::substitute::Substituter;

pub struct Server {
    subst: Arc<Substituter>,
    jobs: Arc<JobTable<SubstituteEvent, SubstituterReply>>,
}

impl Server {
    pub fn new(subst: Arc<Substituter>) -> Arc<Server> {
        Arc::new(Server { subst, jobs: JobTable::new(1024, 256) })
    }
}

impl Handler for Server {
    type Req = SubstituterRequest;
    type Resp = SubstituterReply;
    type Item = SubstituteEvent;

    fn handle(
        self: &Arc<Self>,
        call: Call<SubstituteEvent>,
        req: SubstituterRequest,
    ) -> impl Future<Output = SubstituterReply> + Send + 'static {
        let me = self.clone();
        async move {
            let (job, paths, options) = match req {
                SubstituterRequest::Query { paths, options } => return me.subst.query(paths, options).await,
                SubstituterRequest::Substitute { job, paths, options } => (job, paths, options),
            };
            let s = me.subst.clone();
            let panicked = SubstituterReply::Error(LinkError::internal("the substitution job failed unexpectedly"));
            let item = |p| match p {
                Progress::Output(e) => e,
                Progress::Skipped(n) => SubstituteEvent::Skipped(n),
            };
            let work = move |ctx| s.run_job(ctx, paths, options);
            let status = me.jobs.serve_call(&call, job, panicked, work, item).await;
            match status {
                JobStatus::Finished(reply) => reply,
                JobStatus::Running => SubstituterReply::Error(LinkError::retryable("the request was cancelled")),
                JobStatus::Unknown => SubstituterReply::Error(LinkError::internal("the substitution job was lost")),
            }
        }
    }
}
