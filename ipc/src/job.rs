//! Long work that outlives the call that started it: a [`JobTable`] a server embeds, and
//! [`follow`] for the calling side.
//!
//! A job has a [`JobId`] that is unique across restarts of either side: the caller may choose
//! it (then a resent `start` finds the job already there, which makes starting idempotent) or
//! the table makes one from a random boot id drawn when the table is made and a counter.
//! While a job runs, its output items go to every attached caller through a bounded buffer of
//! its own: a caller that reads too slowly misses items (it is told how many, as
//! [`Progress::Skipped`]) rather than holding up the job or growing memory. When it ends, its
//! result is kept for status queries and late attaches (the last `keep_finished` results).
//!
//! What the table cannot know is what a previous incarnation of its server was running: a
//! restarted server answers [`JobStatus::Unknown`] for those ids unless it persists results
//! itself (the server's business). Callers must handle `Unknown`.
//!
//! A link that carries jobs has requests like `Start { job: Option<JobId>, … }` (answered with
//! the id once started), `Attach { job }` (answered with the job's output as stream items,
//! then its [`JobStatus`] as the final reply) and `Status { job }`; the last two are
//! idempotent. [`JobTable::forward`] serves `Attach`; [`follow`] attaches again when the
//! connection breaks.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::client::{CallStream, Client, ClientError};
use crate::error::{LinkError, LinkRequest};
use crate::server::Call;

/// How often a server of a job link (builder, gc, substituter) sends its `Alive` event while
/// a job runs, so that a silent job can be told from a hung server.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long the caller of a job link waits for any event of a running job before it takes the
/// server for hung, cancels the call and sends it again (four heartbeats).
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// The name of a job, unique across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub String);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// 64 random bits, in hex: distinct for every table made, in this process or any other.
fn boot_id() -> String {
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        // No /dev/urandom: the clock and the pid still differ between incarnations.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b = (t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a server knows about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus<Out> {
    Running,
    Finished(Out),
    /// Never started here, forgotten, or started by a previous incarnation of the server.
    Unknown,
}

/// What an attached caller receives while a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress<Item> {
    Output(Item),
    /// This many items were missed because the caller read too slowly.
    Skipped(u64),
}

/// The handle a job's work gets.
pub struct JobContext<Item> {
    id: JobId,
    output: broadcast::Sender<Item>,
    cancel: CancellationToken,
}

impl<Item> JobContext<Item> {
    pub fn id(&self) -> &JobId {
        &self.id
    }
    /// Hands an output item to whoever is attached now (never waits).
    pub fn emit(&self, item: Item) {
        let _ = self.output.send(item);
    }
    /// Cancelled by [`JobTable::cancel`].
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }
}

struct Job<Item, Out> {
    output: broadcast::Sender<Item>,
    result: watch::Receiver<Option<Out>>,
    cancel: CancellationToken,
}

struct Jobs<Item, Out> {
    by_id: HashMap<JobId, Job<Item, Out>>,
    /// Finished jobs, oldest first, for forgetting beyond `keep_finished`.
    finished: VecDeque<JobId>,
}

/// The jobs of one server incarnation.
pub struct JobTable<Item, Out> {
    boot: String,
    next: AtomicU64,
    buffer: usize,
    keep_finished: usize,
    jobs: Mutex<Jobs<Item, Out>>,
    /// How many calls of [`JobTable::serve_call`] follow each job.
    followers: Mutex<HashMap<JobId, usize>>,
}

/// A caller attached to a job: its further output, then its result.
pub struct Attached<Item, Out> {
    output: broadcast::Receiver<Item>,
    result: watch::Receiver<Option<Out>>,
}

/// The next thing an attached caller learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<Item, Out> {
    Progress(Progress<Item>),
    Finished(Out),
    /// The job's task was dropped without a result (its runtime shut down).
    Lost,
}

impl<Item: Clone, Out: Clone> Attached<Item, Out> {
    /// The next output item, or the result once the job has ended and every item emitted
    /// before the end was read.
    pub async fn next(&mut self) -> Next<Item, Out> {
        use broadcast::error::{RecvError, TryRecvError};
        loop {
            // Items emitted before the end are in the buffer: they come first.
            match self.output.try_recv() {
                Ok(item) => return Next::Progress(Progress::Output(item)),
                Err(TryRecvError::Lagged(n)) => return Next::Progress(Progress::Skipped(n)),
                Err(TryRecvError::Empty | TryRecvError::Closed) => {}
            }
            if let Some(out) = self.result.borrow_and_update().clone() {
                return Next::Finished(out);
            }
            tokio::select! {
                r = self.output.recv() => match r {
                    Ok(item) => return Next::Progress(Progress::Output(item)),
                    Err(RecvError::Lagged(n)) => return Next::Progress(Progress::Skipped(n)),
                    Err(RecvError::Closed) => {
                        if self.result.changed().await.is_err() {
                            return Next::Lost;
                        }
                    }
                },
                r = self.result.changed() => {
                    if r.is_err() && self.result.borrow().is_none() {
                        return Next::Lost;
                    }
                }
            }
        }
    }
}

impl<Item, Out> JobTable<Item, Out>
where
    Item: Clone + Send + 'static,
    Out: Clone + Send + Sync + 'static,
{
    /// A table whose jobs buffer `buffer` output items per attached caller and which keeps the
    /// results of the last `keep_finished` jobs.
    pub fn new(buffer: usize, keep_finished: usize) -> Arc<Self> {
        Arc::new(JobTable {
            boot: boot_id(),
            next: AtomicU64::new(1),
            buffer: buffer.max(1),
            keep_finished,
            jobs: Mutex::new(Jobs { by_id: HashMap::new(), finished: VecDeque::new() }),
            followers: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh id: this table's boot id and a counter.
    pub fn new_id(&self) -> JobId {
        JobId(format!("{}-{}", self.boot, self.next.fetch_add(1, Ordering::Relaxed)))
    }

    /// Starts `work` as job `id` (a fresh one when `None`) on the tokio runtime. When a job of
    /// that id is already known (running or finished), nothing is started; the second value
    /// says whether this call started it. `on_panic` is the result of a job whose work
    /// panicked.
    pub fn start<F, Fut>(self: &Arc<Self>, id: Option<JobId>, on_panic: Out, work: F) -> (JobId, bool)
    where
        F: FnOnce(JobContext<Item>) -> Fut,
        Fut: Future<Output = Out> + Send + 'static,
    {
        let (id, started, _) = self.start_attached(id, on_panic, work);
        (id, started)
    }

    /// [`JobTable::start`], attached to the job from before its work runs, so the caller sees
    /// every item it emits (a later [`JobTable::attach`] sees only what comes after it).
    /// `None` if the job is unknown after all (the table's lock was poisoned).
    pub fn start_attached<F, Fut>(
        self: &Arc<Self>,
        id: Option<JobId>,
        on_panic: Out,
        work: F,
    ) -> (JobId, bool, Option<Attached<Item, Out>>)
    where
        F: FnOnce(JobContext<Item>) -> Fut,
        Fut: Future<Output = Out> + Send + 'static,
    {
        let id = id.unwrap_or_else(|| self.new_id());
        let Ok(mut jobs) = self.jobs.lock() else { return (id, false, None) };
        if let Some(job) = jobs.by_id.get(&id) {
            let attached = Attached { output: job.output.subscribe(), result: job.result.clone() };
            return (id, false, Some(attached));
        }
        let (output, first) = broadcast::channel(self.buffer);
        let (result_tx, result) = watch::channel(None);
        let attached = Attached { output: first, result: result.clone() };
        let cancel = CancellationToken::new();
        let ctx = JobContext { id: id.clone(), output: output.clone(), cancel: cancel.clone() };
        jobs.by_id.insert(id.clone(), Job { output, result, cancel });
        drop(jobs);
        let fut = work(ctx);
        let table = Arc::downgrade(self);
        let job_id = id.clone();
        let task = tokio::spawn(fut);
        tokio::spawn(async move {
            let out = task.await.unwrap_or(on_panic);
            let _ = result_tx.send(Some(out));
            if let Some(table) = table.upgrade() {
                table.finished(job_id);
            }
        });
        (id, true, Some(attached))
    }

    fn finished(&self, id: JobId) {
        let Ok(mut jobs) = self.jobs.lock() else { return };
        jobs.finished.push_back(id);
        while jobs.finished.len() > self.keep_finished {
            if let Some(old) = jobs.finished.pop_front() {
                jobs.by_id.remove(&old);
            }
        }
    }

    pub fn status(&self, id: &JobId) -> JobStatus<Out> {
        let Ok(jobs) = self.jobs.lock() else { return JobStatus::Unknown };
        match jobs.by_id.get(id) {
            None => JobStatus::Unknown,
            Some(job) => match job.result.borrow().clone() {
                Some(out) => JobStatus::Finished(out),
                None => JobStatus::Running,
            },
        }
    }

    /// Attaches to job `id`: `None` if it is unknown.
    pub fn attach(&self, id: &JobId) -> Option<Attached<Item, Out>> {
        let jobs = self.jobs.lock().ok()?;
        let job = jobs.by_id.get(id)?;
        Some(Attached { output: job.output.subscribe(), result: job.result.clone() })
    }

    /// Asks job `id` to stop (its work sees its token cancelled). False if it is unknown.
    pub fn cancel(&self, id: &JobId) -> bool {
        let Ok(jobs) = self.jobs.lock() else { return false };
        jobs.by_id.get(id).map(|j| j.cancel.cancel()).is_some()
    }

    /// Serves a request that starts job `id` or, when it runs already (a resent request),
    /// joins it: the job's output goes to `call` as stream items (made by `item`) and its
    /// status is returned (`Running` if the call went away first). When the last call following
    /// a running job goes away (its client disconnected), the job is cancelled.
    pub async fn serve_call<I, F, Fut>(
        self: &Arc<Self>,
        call: &Call<I>,
        id: JobId,
        on_panic: Out,
        work: F,
        item: impl FnMut(Progress<Item>) -> I,
    ) -> JobStatus<Out>
    where
        I: Serialize,
        F: FnOnce(JobContext<Item>) -> Fut,
        Fut: Future<Output = Out> + Send + 'static,
    {
        self.follow(&id, 1);
        // Attached from the start: a job's first items come before any later attach.
        let (_, _, attached) = self.start_attached(Some(id.clone()), on_panic, work);
        let status = match attached {
            None => JobStatus::Unknown,
            Some(attached) => tokio::select! {
                s = forward_attached(attached, call, item) => s,
                _ = call.token().cancelled() => JobStatus::Running,
            },
        };
        if self.follow(&id, -1) == 0 && matches!(status, JobStatus::Running) {
            self.cancel(&id);
        }
        status
    }

    /// Counts a call following job `id` (`delta` 1) or leaving it (-1); returns how many are left.
    fn follow(&self, id: &JobId, delta: isize) -> usize {
        let mut f = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(id.clone()).or_insert(0);
        *n = (*n as isize + delta).max(0) as usize;
        let left = *n;
        if left == 0 {
            f.remove(id);
        }
        left
    }

    /// Serves an `Attach` request: sends the job's further output to `call` as stream items
    /// (made by `item`) and returns its status (`Finished`, `Unknown`, or `Running` if the
    /// caller went away first).
    pub async fn forward<I>(&self, id: &JobId, call: &Call<I>, item: impl FnMut(Progress<Item>) -> I) -> JobStatus<Out>
    where
        I: Serialize,
    {
        match self.attach(id) {
            Some(attached) => forward_attached(attached, call, item).await,
            None => JobStatus::Unknown,
        }
    }
}

/// [`JobTable::forward`] from an [`Attached`] the caller already holds (e.g. from
/// [`JobTable::start_attached`]).
pub async fn forward_attached<Item, Out, I>(
    mut attached: Attached<Item, Out>,
    call: &Call<I>,
    mut item: impl FnMut(Progress<Item>) -> I,
) -> JobStatus<Out>
where
    Item: Clone,
    Out: Clone,
    I: Serialize,
{
    loop {
        match attached.next().await {
            Next::Progress(p) => {
                if call.send(item(p)).await.is_err() {
                    return JobStatus::Running;
                }
            }
            Next::Finished(out) => return JobStatus::Finished(out),
            Next::Lost => return JobStatus::Unknown,
        }
    }
}

/// Follows a job to its end on the calling side: sends `attach` (which must be idempotent),
/// hands each stream item to `on_item`, and returns the final reply. When the connection
/// breaks in the middle (the server restarting), attaches again; items emitted meanwhile are
/// missed. A restarted server that lost the job answers with its `Unknown` status, which the
/// caller sees in the reply. Fails when `within` has passed.
pub async fn follow<Req, Resp, Item>(
    client: &Client<Req, Resp, Item>,
    attach: Req,
    within: Duration,
    mut on_item: impl FnMut(Item),
) -> Result<Resp, ClientError>
where
    Req: LinkRequest,
    Resp: DeserializeOwned + Send + 'static,
    Item: DeserializeOwned + Send + 'static,
{
    debug_assert!(attach.idempotent());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut stream = client.call_stream_with_deadline(attach.clone(), left);
        loop {
            match stream.next_item().await {
                Ok(Some(item)) => on_item(item),
                Ok(None) => return stream.reply().await,
                // The server went away in the middle: attach again.
                Err(ClientError::Interrupted { .. }) => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The bounds of a job call that [`Resend`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// The deadline of one call, for its whole stream: long enough never to cut a job (a
    /// build may run for days); `idle` is what catches a hang.
    pub call: Duration,
    /// With no event for this long from a server that was answering, it is taken for hung.
    pub idle: Duration,
    /// How long in a row the server may be unreachable or silent before the caller gives up.
    pub unavailable: Duration,
    /// The pause before the request is sent again.
    pub retry_pause: Duration,
}

impl Default for JobLimits {
    fn default() -> JobLimits {
        JobLimits {
            call: Duration::from_secs(365 * 24 * 3600),
            idle: IDLE_LIMIT,
            unavailable: Duration::from_secs(60),
            retry_pause: Duration::from_millis(200),
        }
    }
}

/// What [`Resend::next`] heard from the server.
#[derive(Debug)]
pub enum Heard<Item, Resp> {
    /// A stream item (the server is there: the unavailable bound starts again at the next
    /// break).
    Item(Item),
    /// The final reply of a call. If it asks for the request to be sent again (a retryable
    /// error: the server restarting), say so with [`Resend::resend`].
    Reply(Resp),
}

/// A job request (which must be idempotent: it names its [`JobId`], so a resent one joins the
/// running job) followed on the calling side until it is answered, as socket-front follows
/// builds, collections and substitutions and the builder its substitutions.
///
/// The server of a job link sends an event at least every [`HEARTBEAT`]; with none for
/// [`JobLimits::idle`] it is taken for hung: the call is dropped (the link cancels it) and
/// the same request sent again, as it is when the stream breaks (the server restarted or was
/// killed). Items emitted meanwhile are missed. The server may stay unreachable or silent for
/// [`JobLimits::unavailable`] in a row — at first contact, or from the moment a stream broke
/// or the idle limit passed — before [`Resend::next`] gives up with a retryable
/// [`LinkError`] "no answer within 60s (why)". Dropping it drops the call, which cancels the
/// job.
pub struct Resend<'c, Req, Resp, Item> {
    client: &'c Client<Req, Resp, Item>,
    req: Req,
    limits: JobLimits,
    call: Option<CallStream<'c, Req, Resp, Item>>,
    /// Since when the server has been away (at first: not heard from yet), and why.
    away: Option<tokio::time::Instant>,
    why: Option<String>,
    /// The last call broke: pause before the next.
    pause: bool,
}

impl<'c, Req, Resp, Item> Resend<'c, Req, Resp, Item>
where
    Req: LinkRequest,
    Resp: DeserializeOwned + Send + 'static,
    Item: DeserializeOwned + Send + 'static,
{
    pub fn new(client: &'c Client<Req, Resp, Item>, req: Req, limits: JobLimits) -> Self {
        Resend { client, req, limits, call: None, away: Some(tokio::time::Instant::now()), why: None, pause: false }
    }

    /// The next item or final reply, sending the request (again) as the type's documentation
    /// says; the retryable error when the server stayed away too long. After a reply, the
    /// next call sends the request again.
    pub async fn next(&mut self) -> Result<Heard<Item, Resp>, LinkError> {
        loop {
            if std::mem::take(&mut self.pause) {
                tokio::time::sleep(self.limits.retry_pause).await;
            }
            let wait = match self.away {
                None => self.limits.idle,
                Some(since) => match self.limits.unavailable.checked_sub(since.elapsed()) {
                    Some(left) => left,
                    None => return Err(self.unavailable()),
                },
            };
            let (client, limits) = (self.client, self.limits);
            let call = self.call.get_or_insert_with(|| client.call_stream_with_deadline(self.req.clone(), limits.call));
            let broke = match tokio::time::timeout(wait, call.next_item()).await {
                Ok(Ok(Some(item))) => {
                    self.away = None;
                    return Ok(Heard::Item(item));
                }
                Ok(Ok(None)) => match self.call.take().map(|c| c.reply()) {
                    Some(reply) => match reply.await {
                        Ok(r) => return Ok(Heard::Reply(r)),
                        Err(e) => LinkError::from(e).message,
                    },
                    None => continue,
                },
                // The stream broke: the server restarted, was killed, or is gone.
                Ok(Err(e)) => LinkError::from(e).message,
                Err(_) if self.away.is_none() => format!("no event for {}s", self.limits.idle.as_secs_f64()),
                Err(_) => return Err(self.unavailable()),
            };
            self.resend(broke);
        }
    }

    /// Sends the request again after a pause, `why` being what the caller was told (a
    /// retryable error in the reply); the unavailable bound starts unless it runs already.
    pub fn resend(&mut self, why: String) {
        // The call is dropped here: if its request is still running, it is cancelled.
        self.call = None;
        self.away.get_or_insert_with(tokio::time::Instant::now);
        self.why = Some(why);
        self.pause = true;
    }

    fn unavailable(&self) -> LinkError {
        unavailable(self.limits.unavailable, self.why.as_deref())
    }
}

/// The error of a job whose server stayed away for `limit`, for `why`.
fn unavailable(limit: Duration, why: Option<&str>) -> LinkError {
    let mut message = format!("no answer within {}s", limit.as_secs_f64());
    if let Some(why) = why {
        message.push_str(&format!(" ({why})"));
    }
    LinkError::retryable(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn finished<Item: Clone + Send + 'static>(t: &JobTable<Item, u32>, id: &JobId) -> u32 {
        let mut a = t.attach(id).unwrap();
        loop {
            match a.next().await {
                Next::Finished(out) => return out,
                Next::Lost => panic!("lost"),
                Next::Progress(_) => {}
            }
        }
    }

    #[test]
    fn the_unavailable_message_says_how_long_and_why() {
        let e = unavailable(Duration::from_secs(60), Some("connection refused"));
        assert_eq!(e.client_text("builder"), "builder is unavailable: no answer within 60s (connection refused)");
        assert_eq!(unavailable(Duration::from_millis(1500), None).message, "no answer within 1.5s");
    }

    #[tokio::test]
    async fn start_attached_sees_what_the_job_emits_at_once() {
        let t: Arc<JobTable<u32, u32>> = JobTable::new(16, 4);
        let (id, started, attached) = t.start_attached(None, 0, |ctx| async move {
            // Emitted before anyone could attach with `attach`.
            ctx.emit(7);
            1
        });
        assert!(started);
        let mut a = attached.unwrap();
        assert_eq!(a.next().await, Next::Progress(Progress::Output(7)));
        assert_eq!(a.next().await, Next::Finished(1));
        // The same id again: attached to the known job, nothing started.
        let (_, again, attached) = t.start_attached(Some(id), 0, |_| async { 2 });
        assert!(!again);
        assert_eq!(attached.unwrap().next().await, Next::Finished(1));
    }

    #[tokio::test]
    async fn ids_are_unique_across_tables_and_a_chosen_id_starts_once() {
        let (a, b) = (JobTable::<u32, u32>::new(4, 4), JobTable::<u32, u32>::new(4, 4));
        let ids = [a.new_id(), a.new_id(), b.new_id()];
        assert!(ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2], "{ids:?}");
        let id = JobId("mine".into());
        assert_eq!(a.start(Some(id.clone()), 0, |_| async { 1 }), (id.clone(), true));
        // A resent start finds it (running or finished) and starts nothing.
        assert_eq!(a.start(Some(id.clone()), 0, |_| async { 2 }), (id.clone(), false));
        assert_eq!(finished(&a, &id).await, 1);
        assert_eq!(a.start(Some(id.clone()), 0, |_| async { 3 }), (id.clone(), false));
        assert_eq!(a.status(&id), JobStatus::Finished(1));
        // Another table (a restarted server) has never heard of it.
        assert_eq!(b.status(&id), JobStatus::Unknown);
        assert!(b.attach(&id).is_none());
    }

    #[tokio::test]
    async fn attached_callers_get_the_output_in_order_then_the_result() {
        let t = JobTable::<u32, u32>::new(16, 4);
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        let (id, _) = t.start(None, 0, |ctx| async move {
            let _ = go.await;
            for i in 0..10 {
                ctx.emit(i);
            }
            10
        });
        assert_eq!(t.status(&id), JobStatus::Running);
        let mut a = t.attach(&id).unwrap();
        go_tx.send(()).unwrap();
        for i in 0..10 {
            assert_eq!(a.next().await, Next::Progress(Progress::Output(i)));
        }
        assert_eq!(a.next().await, Next::Finished(10));
        // Attaching after the end: the result at once.
        assert_eq!(t.attach(&id).unwrap().next().await, Next::Finished(10));
    }

    #[tokio::test]
    async fn a_slow_attacher_misses_items_instead_of_holding_up_the_job() {
        let t = JobTable::<u32, u32>::new(4, 4);
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        let (id, _) = t.start(None, 0, |ctx| async move {
            let _ = go.await;
            for i in 0..100 {
                ctx.emit(i);
            }
            100
        });
        let mut a = t.attach(&id).unwrap();
        go_tx.send(()).unwrap();
        // The job ends without anyone reading.
        while t.status(&id) == JobStatus::Running {
            tokio::task::yield_now().await;
        }
        assert_eq!(a.next().await, Next::Progress(Progress::Skipped(96)));
        for i in 96..100 {
            assert_eq!(a.next().await, Next::Progress(Progress::Output(i)));
        }
        assert_eq!(a.next().await, Next::Finished(100));
    }

    #[tokio::test]
    async fn only_the_last_results_are_kept() {
        let t = JobTable::<u32, u32>::new(4, 2);
        let mut ids = Vec::new();
        for n in 0..3 {
            let (id, _) = t.start(None, 0, move |_| async move { n });
            assert_eq!(finished(&t, &id).await, n);
            ids.push(id);
        }
        tokio::task::yield_now().await;
        assert_eq!(t.status(&ids[0]), JobStatus::Unknown);
        assert_eq!(t.status(&ids[1]), JobStatus::Finished(1));
        assert_eq!(t.status(&ids[2]), JobStatus::Finished(2));
    }

    #[tokio::test]
    async fn cancel_and_panic() {
        let t = JobTable::<u32, u32>::new(4, 4);
        let (id, _) = t.start(None, 7, |ctx| async move {
            ctx.token().cancelled().await;
            1
        });
        assert!(t.cancel(&id));
        assert_eq!(finished(&t, &id).await, 1);
        assert!(!t.cancel(&JobId("nope".into())));
        // A job whose work panics ends with the table's stand-in result.
        let (id, _) = t.start(None, 7, |_| async { panic!("on purpose") });
        assert_eq!(finished(&t, &id).await, 7);
    }
}
