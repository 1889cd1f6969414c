//! Client and server together over real Unix sockets. Where a test needs a peer that
//! misbehaves on purpose (never accepts, never answers, drops the connection in the middle of
//! a request) it uses a stand-in written here with the crate's own framing, and says so.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::time::{timeout, Instant};

use crate::frame::{exchange_hello, read_frame, write_frame, ToClient, ToServer};
use crate::job::{self, JobId, JobStatus, JobTable, Progress};
use crate::{serve_connection, Call, Client, ClientError, Handler, LinkRequest, LinkSpec, STREAM_WINDOW};

const SPEC: LinkSpec = LinkSpec { name: "test", version: 1 };

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Req {
    /// Doubles the number after a delay (ms). Idempotent.
    Double(u32, u64),
    /// Counted by the server: not idempotent.
    Once(u32),
    /// Streams `0..n`, then replies `n`.
    Count(u32),
    /// Runs for 10 s unless cancelled.
    Sleep10s,
    /// Starts a job that emits `0..n` with `ms` between items and ends with `n`.
    StartJob {
        job: Option<JobId>,
        n: u32,
        ms: u64,
    },
    Attach(JobId),
    Status(JobId),
}

impl LinkRequest for Req {
    fn idempotent(&self) -> bool {
        // Starting a job is idempotent only under an id the caller chose.
        !matches!(self, Req::Once(_) | Req::StartJob { job: None, .. })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Resp {
    Num(u32),
    Started(JobId),
    Job(JobStatus<u32>),
}

type TestClient = Client<Req, Resp, Progress<u32>>;

#[derive(Default)]
struct State {
    /// Requests handled (all kinds).
    seen: AtomicUsize,
    /// Stream items `Count` managed to send.
    sent: AtomicUsize,
    /// Set when a handler saw its call cancelled.
    cancelled: AtomicBool,
}

struct Test {
    state: Arc<State>,
    jobs: Arc<JobTable<u32, u32>>,
}

impl Test {
    fn new() -> Arc<Test> {
        Arc::new(Test { state: Arc::default(), jobs: JobTable::new(64, 16) })
    }
}

impl Handler for Test {
    type Req = Req;
    type Resp = Resp;
    type Item = Progress<u32>;
    fn handle(self: &Arc<Self>, call: Call<Progress<u32>>, req: Req) -> impl Future<Output = Resp> + Send + 'static {
        let me = self.clone();
        me.state.seen.fetch_add(1, Ordering::SeqCst);
        async move {
            match req {
                Req::Double(x, ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Resp::Num(x * 2)
                }
                Req::Once(x) => Resp::Num(x),
                Req::Count(n) => {
                    for i in 0..n {
                        if call.send(Progress::Output(i)).await.is_err() {
                            me.state.cancelled.store(true, Ordering::SeqCst);
                            return Resp::Num(i);
                        }
                        me.state.sent.fetch_add(1, Ordering::SeqCst);
                    }
                    Resp::Num(n)
                }
                Req::Sleep10s => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                        _ = call.token().cancelled() => me.state.cancelled.store(true, Ordering::SeqCst),
                    }
                    Resp::Num(0)
                }
                Req::StartJob { job, n, ms } => {
                    let (id, _) = me.jobs.start(job, u32::MAX, move |ctx| async move {
                        for i in 0..n {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            ctx.emit(i);
                        }
                        n
                    });
                    Resp::Started(id)
                }
                Req::Attach(id) => Resp::Job(me.jobs.forward(&id, &call, |p| p).await),
                Req::Status(id) => Resp::Job(me.jobs.status(&id)),
            }
        }
    }
}

/// A server in a runtime of its own, so that killing it closes every socket it had, as the
/// death of its process would.
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    path: PathBuf,
}

impl Server {
    fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Serves `handler` on `path`.
fn serve(path: &Path, handler: Arc<Test>) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = {
        let _g = rt.enter();
        UnixListener::bind(path).unwrap()
    };
    rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_connection(s, SPEC, "test-server", handler.clone()));
        }
    });
    Server { rt: Some(rt), path: path.to_owned() }
}

fn client(path: &Path, deadline: Duration) -> Arc<TestClient> {
    Arc::new(Client::new(path, SPEC, "t", deadline))
}

fn socket() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    (dir, path)
}

/// Bounds a test's wait, so that a missing deadline fails the test instead of hanging it.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    timeout(Duration::from_secs(20), f).await.expect("the call hung")
}

/// Stand-in for a server that restarts in the middle of a request: it accepts one
/// connection, says hello, reads one request and counts it, then closes the connection and
/// its listening socket. 100 ms later a real server comes back on the same path.
fn serve_after_breaking_one_request(
    path: &Path,
    handler: Arc<Test>,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let broken_seen = Arc::new(AtomicUsize::new(0));
    let seen = broken_seen.clone();
    let listener = UnixListener::bind(path).unwrap();
    let path = path.to_owned();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        exchange_hello(&mut s, SPEC, "breaker").await.unwrap();
        let _: ToServer<Req> = read_frame(&mut s).await.unwrap();
        seen.fetch_add(1, Ordering::SeqCst);
        drop(s);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Kept until the test ends.
        let _srv = serve(&path, handler);
        std::future::pending::<()>().await;
    });
    (broken_seen, task)
}

#[tokio::test]
async fn out_of_order_replies_are_matched() {
    let (_dir, path) = socket();
    let _srv = serve(&path, Test::new());
    let client = client(&path, Duration::from_secs(5));
    let slow = {
        let c = client.clone();
        tokio::spawn(async move { c.call(Req::Double(1, 200)).await })
    };
    assert_eq!(client.call(Req::Double(2, 0)).await.unwrap(), Resp::Num(4));
    assert_eq!(slow.await.unwrap().unwrap(), Resp::Num(2));
}

#[tokio::test]
async fn an_idempotent_request_is_resent_after_the_connection_breaks() {
    let (_dir, path) = socket();
    let server = Test::new();
    let (broken_seen, _srv) = serve_after_breaking_one_request(&path, server.clone());
    let client = client(&path, Duration::from_secs(10));
    assert_eq!(bounded(client.call(Req::Double(21, 0))).await.unwrap(), Resp::Num(42));
    assert_eq!(broken_seen.load(Ordering::SeqCst), 1, "the first attempt reached the broken server");
    assert_eq!(server.state.seen.load(Ordering::SeqCst), 1, "the resend reached the new server");
    assert_eq!(client.generation(), 2);
}

#[tokio::test]
async fn a_request_that_is_not_idempotent_is_not_resent() {
    let (_dir, path) = socket();
    let server = Test::new();
    let (broken_seen, _srv) = serve_after_breaking_one_request(&path, server.clone());
    let client = client(&path, Duration::from_secs(10));
    let r = bounded(client.call(Req::Once(1))).await;
    assert!(matches!(r, Err(ClientError::MaybeDone { .. })), "{r:?}");
    assert_eq!(broken_seen.load(Ordering::SeqCst), 1);
    // The next request goes to the new server; the first one never did.
    assert_eq!(bounded(client.call(Req::Once(2))).await.unwrap(), Resp::Num(2));
    assert_eq!(server.state.seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn call_survives_a_server_restart() {
    let (_dir, path) = socket();
    let srv = serve(&path, Test::new());
    let client = client(&path, Duration::from_secs(10));
    assert_eq!(client.call(Req::Double(3, 0)).await.unwrap(), Resp::Num(6));
    // The server dies (every socket of it closed) while a request is in flight, then comes
    // back on the same path.
    let inflight = {
        let c = client.clone();
        tokio::spawn(async move { c.call(Req::Double(5, 300)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    srv.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _srv2 = serve(&path, Test::new());
    assert_eq!(bounded(inflight).await.unwrap().unwrap(), Resp::Num(10));
}

#[tokio::test]
async fn call_after_the_peer_closed_an_idle_connection() {
    // Stand-in: a server that answers one request per connection, then closes it.
    let (_dir, path) = socket();
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = exchange_hello(&mut s, SPEC, "one-shot").await;
            if let Ok(ToServer::Request { id, .. }) = read_frame::<_, ToServer<Req>>(&mut s).await {
                let _ = write_frame(&mut s, &ToClient::<(), Resp>::Final { id, body: Resp::Num(7) }).await;
            }
        }
    });
    let client = client(&path, Duration::from_secs(5));
    assert_eq!(client.call(Req::Double(1, 0)).await.unwrap(), Resp::Num(7));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The connection is dead but the client has not written to it since: even a request
    // that is not idempotent goes out on a new connection.
    assert_eq!(bounded(client.call(Req::Once(2))).await.unwrap(), Resp::Num(7));
    assert_eq!(client.generation(), 2);
}

#[tokio::test]
async fn unavailable_when_there_is_no_socket() {
    let (_dir, path) = socket();
    let client = client(&path, Duration::from_millis(100));
    assert!(matches!(bounded(client.call(Req::Double(1, 0))).await, Err(ClientError::Unavailable { .. })));
}

#[tokio::test]
async fn deadline_with_a_listener_nobody_accepts() {
    // Stand-in: the supervisor's listening socket while the component is down. connect()
    // succeeds (the kernel queues it), nobody ever says hello.
    let (_dir, path) = socket();
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let client = client(&path, Duration::from_millis(300));
    let start = Instant::now();
    let r = bounded(client.call(Req::Double(1, 0))).await;
    assert!(matches!(r, Err(ClientError::Unavailable { .. })), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    // The per-call deadline overrides the client's.
    let r = bounded(client.call_with_deadline(Req::Double(1, 0), Duration::from_millis(50))).await;
    assert!(matches!(r, Err(ClientError::Unavailable { .. })), "{r:?}");
}

#[tokio::test]
async fn deadline_with_a_peer_that_says_hello_and_never_replies() {
    // Stand-in: a server that completes the hello and reads requests, but never answers.
    let (_dir, path) = socket();
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = exchange_hello(&mut s, SPEC, "mute").await;
                while read_frame::<_, ToServer<Req>>(&mut s).await.is_ok() {}
            });
        }
    });
    let client = client(&path, Duration::from_millis(300));
    let r = bounded(client.call(Req::Double(1, 0))).await;
    assert!(matches!(r, Err(ClientError::Unavailable { .. })), "{r:?}");
    // Sent and not idempotent: it may have been done.
    let r = bounded(client.call(Req::Once(1))).await;
    assert!(matches!(r, Err(ClientError::MaybeDone { .. })), "{r:?}");
}

#[tokio::test]
async fn a_slow_stream_holds_up_neither_the_connection_nor_memory() {
    let (_dir, path) = socket();
    let server = Test::new();
    let _srv = serve(&path, server.clone());
    let client = client(&path, Duration::from_secs(20));
    let mut slow = client.call_stream(Req::Count(1000));
    assert_eq!(bounded(slow.next_item()).await.unwrap(), Some(Progress::Output(0)));
    // The consumer stops reading. Another request on the same connection is answered.
    assert_eq!(bounded(client.call(Req::Double(5, 0))).await.unwrap(), Resp::Num(10));
    assert_eq!(client.generation(), 1);
    // The producer is blocked once the window is used up, instead of sending everything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = server.state.sent.load(Ordering::SeqCst);
    assert!(sent <= STREAM_WINDOW as usize, "{sent} items sent ahead of a consumer that took 1");
    // Reading again lets it finish, in order.
    for i in 1..1000 {
        assert_eq!(bounded(slow.next_item()).await.unwrap(), Some(Progress::Output(i)));
    }
    assert_eq!(bounded(slow.reply()).await.unwrap(), Resp::Num(1000));
}

#[tokio::test]
async fn dropping_a_stream_cancels_its_producer() {
    let (_dir, path) = socket();
    let server = Test::new();
    let _srv = serve(&path, server.clone());
    let client = client(&path, Duration::from_secs(20));
    let mut s = client.call_stream(Req::Count(1_000_000));
    assert!(bounded(s.next_item()).await.unwrap().is_some());
    drop(s);
    bounded(async {
        while !server.state.cancelled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn dropping_a_call_cancels_its_handler() {
    let (_dir, path) = socket();
    let server = Test::new();
    let _srv = serve(&path, server.clone());
    let client = client(&path, Duration::from_secs(20));
    assert!(timeout(Duration::from_millis(300), client.call(Req::Sleep10s)).await.is_err());
    let start = Instant::now();
    while !server.state.cancelled.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(5), "the handler was not told of the cancellation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_job_is_started_followed_and_queried() {
    let (_dir, path) = socket();
    let _srv = serve(&path, Test::new());
    let client = client(&path, Duration::from_secs(20));
    let Resp::Started(id) = client.call(Req::StartJob { job: None, n: 5, ms: 20 }).await.unwrap() else { panic!() };
    assert_eq!(client.call(Req::Status(id.clone())).await.unwrap(), Resp::Job(JobStatus::Running));
    let mut got = Vec::new();
    let end =
        bounded(job::follow(&client, Req::Attach(id.clone()), Duration::from_secs(20), |p| got.push(p))).await.unwrap();
    assert_eq!(end, Resp::Job(JobStatus::Finished(5)));
    assert!(!got.is_empty() && got.iter().all(|p| matches!(p, Progress::Output(i) if *i < 5)), "{got:?}");
    assert_eq!(client.call(Req::Status(id.clone())).await.unwrap(), Resp::Job(JobStatus::Finished(5)));
    // Attaching after the end gives the result at once.
    assert_eq!(client.call(Req::Attach(id)).await.unwrap(), Resp::Job(JobStatus::Finished(5)));
}

#[tokio::test]
async fn a_job_survives_its_caller_and_a_restarted_server_answers_unknown() {
    let (_dir, path) = socket();
    let srv = serve(&path, Test::new());
    let id = {
        // This caller goes away once the job is started.
        let first = client(&path, Duration::from_secs(20));
        let Resp::Started(id) = first.call(Req::StartJob { job: None, n: 3, ms: 50 }).await.unwrap() else { panic!() };
        id
    };
    let second = client(&path, Duration::from_secs(20));
    let end = bounded(job::follow(&second, Req::Attach(id.clone()), Duration::from_secs(20), |_| {})).await.unwrap();
    assert_eq!(end, Resp::Job(JobStatus::Finished(3)));

    // A long job; the server dies while the job is followed; the one that comes back on
    // the same path has never heard of it.
    let Resp::Started(long) = second.call(Req::StartJob { job: None, n: 1000, ms: 20 }).await.unwrap() else {
        panic!()
    };
    let follower = {
        let c = second.clone();
        let long = long.clone();
        tokio::spawn(async move {
            let mut n = 0;
            let r = job::follow(&c, Req::Attach(long), Duration::from_secs(20), |_| n += 1).await;
            (r, n)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    srv.kill();
    let _srv2 = serve(&path, Test::new());
    let (r, n) = bounded(follower).await.unwrap();
    assert!(n > 0, "items came before the restart");
    assert_eq!(r.unwrap(), Resp::Job(JobStatus::Unknown));
    assert_eq!(second.call(Req::Status(long)).await.unwrap(), Resp::Job(JobStatus::Unknown));
}

#[tokio::test]
async fn resend_sends_a_job_again_when_its_server_is_killed_mid_stream() {
    let (_dir, path) = socket();
    let srv = serve(&path, Test::new());
    let client = client(&path, Duration::from_secs(20));
    let limits = job::JobLimits { unavailable: Duration::from_secs(10), ..job::JobLimits::default() };
    let mut call = job::Resend::new(&client, Req::Count(1000), limits);
    // The server is there: a first item, then it is killed (the client reads no more, so
    // the stream is in the middle) and another comes back on the same path.
    assert!(matches!(bounded(call.next()).await, Ok(job::Heard::Item(Progress::Output(0)))));
    srv.kill();
    let _srv2 = serve(&path, Test::new());
    let mut items = 0;
    let reply = loop {
        match bounded(call.next()).await.unwrap() {
            job::Heard::Item(_) => items += 1,
            job::Heard::Reply(r) => break r,
        }
    };
    assert_eq!(reply, Resp::Num(1000));
    // The second server streamed the whole count again.
    assert!(items >= 1000, "{items}");
}

#[tokio::test]
async fn resend_gives_up_on_a_server_that_never_answers() {
    let (_dir, path) = socket();
    let _srv = serve(&path, Test::new());
    let client = client(&path, Duration::from_secs(20));
    let limits = job::JobLimits {
        idle: Duration::from_millis(200),
        unavailable: Duration::from_millis(300),
        retry_pause: Duration::from_millis(10),
        ..job::JobLimits::default()
    };
    // Sleep10s sends no item: at first contact, only the unavailable bound applies.
    let mut call = job::Resend::new(&client, Req::Sleep10s, limits);
    let e = bounded(call.next()).await.unwrap_err();
    assert_eq!(e.client_text("test"), "test is unavailable: no answer within 0.3s");
    // A reply asking to be resent: the request goes out again and the bound holds.
    let mut call = job::Resend::new(&client, Req::Double(2, 0), limits);
    assert!(matches!(bounded(call.next()).await, Ok(job::Heard::Reply(Resp::Num(4)))));
    call.resend("restarting".into());
    assert!(matches!(bounded(call.next()).await, Ok(job::Heard::Reply(Resp::Num(4)))));
}
