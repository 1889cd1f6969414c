//! The `substituter` link (`guix_ipc::substituter`): `Query` answered at once, each
//! `Substitute` a job of the process's [`JobTable`] under the id its caller chose, so one sent
//! again for a running job attaches to it. When no call follows a job any more (its client
//! went away) it is cancelled.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use guix_ipc::job::{forward_attached, JobId, JobStatus, JobTable, Progress};
use guix_ipc::substituter::{SubstituteEvent, SubstituterReply, SubstituterRequest};
use guix_ipc::{Call, Handler, LinkError};

use crate::substitute::Substituter;

pub struct Server {
    subst: Arc<Substituter>,
    jobs: Arc<JobTable<SubstituteEvent, SubstituterReply>>,
    attached: Mutex<HashMap<JobId, usize>>,
}

impl Server {
    pub fn new(subst: Arc<Substituter>) -> Arc<Server> {
        Arc::new(Server { subst, jobs: JobTable::new(1024, 256), attached: Mutex::new(HashMap::new()) })
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
            me.attach(&job, 1);
            let s = me.subst.clone();
            let panicked = SubstituterReply::Error(LinkError::internal("the substitution job failed unexpectedly"));
            let (_, _, attached) =
                me.jobs.start_attached(Some(job.clone()), panicked, move |ctx| s.run_job(ctx, paths, options));
            let item = |p| match p {
                Progress::Output(e) => e,
                Progress::Skipped(n) => SubstituteEvent::Skipped(n),
            };
            let status = match attached {
                None => JobStatus::Unknown,
                Some(attached) => tokio::select! {
                    s = forward_attached(attached, &call, item) => s,
                    _ = call.token().cancelled() => JobStatus::Running,
                },
            };
            if me.attach(&job, -1) == 0 && matches!(status, JobStatus::Running) {
                me.jobs.cancel(&job);
            }
            match status {
                JobStatus::Finished(reply) => reply,
                JobStatus::Running => SubstituterReply::Error(LinkError::retryable("the request was cancelled")),
                JobStatus::Unknown => SubstituterReply::Error(LinkError::internal("the substitution job was lost")),
            }
        }
    }
}
