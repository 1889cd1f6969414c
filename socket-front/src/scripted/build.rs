//! BuildPaths through the builder link, scripted: a guix client's bytes on one side (over an
//! in-memory pipe, as in the rest of [`crate::scripted`]), and on the other a stand-in builder
//! that serves the real `builder` link on a real Unix socket with the real `guix_ipc` server,
//! playing a script of events and replies per call. The real builder is not ready yet; the
//! end-to-end tests against the real `guix` client replace this stand-in with it later. What
//! is checked here is socket-front's side: the exact bytes the client gets, the request the
//! builder gets, resending after a break or a hang, the bounds, and cancellation.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use guix_formats::worker::{BuildMode as WireMode, DerivedPath, SetOptions};
use guix_ipc::builder::{BuildEvent, BuildMode, BuildReply, BuilderRequest};
use guix_ipc::{Call, Handler, LinkError};
use tokio::io::{AsyncRead, DuplexStream, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::*;

/// One step of the stand-in's script for a call.
#[derive(Debug, Clone)]
enum Step {
    Send(BuildEvent),
    /// Tells the test (through [`StandIn::notes`]) and goes on.
    Notify,
    Sleep(Duration),
    /// Waits until the call is cancelled (recorded), and ends without a reply.
    AwaitCancel,
    Reply(BuildReply),
}

/// A stand-in builder: call `i` plays `scripts[i]` (the last script for later calls).
struct StandIn {
    scripts: Vec<Vec<Step>>,
    calls: Mutex<Vec<BuilderRequest>>,
    /// The numbers of the calls whose token was cancelled.
    cancelled: Mutex<Vec<usize>>,
    notes: mpsc::UnboundedSender<usize>,
}

impl Handler for StandIn {
    type Req = BuilderRequest;
    type Resp = BuildReply;
    type Item = BuildEvent;
    fn handle(
        self: &Arc<Self>,
        call: Call<BuildEvent>,
        req: BuilderRequest,
    ) -> impl std::future::Future<Output = BuildReply> + Send + 'static {
        let me = self.clone();
        async move {
            let n = {
                let mut calls = me.calls.lock().unwrap();
                calls.push(req);
                calls.len() - 1
            };
            let script = me.scripts[n.min(me.scripts.len() - 1)].clone();
            for step in script {
                match step {
                    Step::Send(e) => {
                        if call.send(e).await.is_err() {
                            me.cancelled.lock().unwrap().push(n);
                            break;
                        }
                    }
                    Step::Notify => {
                        let _ = me.notes.send(n);
                    }
                    Step::Sleep(d) => tokio::time::sleep(d).await,
                    Step::AwaitCancel => {
                        call.token().cancelled().await;
                        me.cancelled.lock().unwrap().push(n);
                        break;
                    }
                    Step::Reply(r) => return r,
                }
            }
            BuildReply::Error(LinkError::internal("cancelled (never sent)"))
        }
    }
}

impl StandIn {
    fn calls(&self) -> Vec<BuilderRequest> {
        self.calls.lock().unwrap().clone()
    }
    fn cancelled(&self) -> Vec<usize> {
        self.cancelled.lock().unwrap().clone()
    }
}

/// A running stand-in builder, in a runtime of its own: [`Builder::kill`] shuts that runtime
/// down, which drops every task and closes every socket at once, as the death of a builder
/// process does.
struct Builder {
    stand_in: Arc<StandIn>,
    notes: mpsc::UnboundedReceiver<usize>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Builder {
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::ops::Deref for Builder {
    type Target = StandIn;
    fn deref(&self) -> &StandIn {
        &self.stand_in
    }
}

/// Serves the builder link at `path` with `scripts` until killed.
fn serve_builder(path: &Path, scripts: Vec<Vec<Step>>) -> Builder {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (notes_tx, notes) = mpsc::unbounded_channel();
    let stand_in = Arc::new(StandIn { scripts, calls: Mutex::default(), cancelled: Mutex::default(), notes: notes_tx });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let s = stand_in.clone();
    rt.spawn(async move {
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(guix_ipc::serve_connection(stream, BUILDER_LINK, "stand-in builder", s.clone()));
        }
    });
    Builder { stand_in, notes, rt: Some(rt) }
}

/// Records every byte read, for byte-exact comparisons.
struct Tee<R> {
    inner: R,
    seen: Vec<u8>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &r {
            let new = buf.filled()[before..].to_vec();
            self.seen.extend(new);
        }
        r
    }
}

/// A guix client on one connection, which keeps its socket open while it waits (a client
/// that shuts down its writing side is taken for gone during a build).
struct Session {
    rd: Tee<ReadHalf<DuplexStream>>,
    wr: WriteHalf<DuplexStream>,
    task: tokio::task::JoinHandle<()>,
    store: StoreDir,
}

const UNTRUSTED: Peer = Peer { uid: None, pid: None };
const ROOT: Peer = Peer { uid: Some(0), pid: Some(1) };

impl Session {
    /// Handshake, then SetOptions with `options`.
    async fn open(rig: &Rig, peer: Peer, options: SetOptions) -> Session {
        let (client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(rig.shared.clone(), CONN, peer, BufReader::new(server)));
        let (rd, wr) = tokio::io::split(client);
        let mut s = Session { rd: Tee { inner: rd, seen: Vec::new() }, wr, task, store: rig.store().clone() };
        s.wr.write_all(&hello(V)).await.unwrap();
        let mut greeting = vec![0u8; server_hello().len()];
        s.rd.read_exact(&mut greeting).await.unwrap();
        assert_eq!(greeting, server_hello());
        s.send(&Request::SetOptions(options)).await;
        assert_eq!(s.answer().await, frame(&StderrMsg::Last).await);
        s
    }

    async fn send(&mut self, req: &Request) {
        let bytes = request(&self.store, req).await;
        self.wr.write_all(&bytes).await.unwrap();
    }

    /// Every byte of one answer: its frames up to the terminal one, and after `STDERR_LAST`
    /// the one-word reply (BuildPaths', IsValidPath's).
    async fn answer(&mut self) -> Vec<u8> {
        let start = self.rd.seen.len();
        let read = async {
            loop {
                match read_stderr(&mut self.rd, V, &Limits::DEFAULT).await.unwrap() {
                    StderrMsg::Last => {
                        // SetOptions has no reply word; every other request here has one.
                        break;
                    }
                    StderrMsg::Error { .. } => return,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("no answer");
        self.rd.seen[start..].to_vec()
    }

    /// [`Session::answer`] and the reply word after `STDERR_LAST`.
    async fn answer_with_reply(&mut self) -> Vec<u8> {
        let mut out = self.answer().await;
        if out.ends_with(&frame(&StderrMsg::Last).await) {
            let mut word = [0u8; 8];
            tokio::time::timeout(DEADLINE, self.rd.read_exact(&mut word)).await.expect("no reply").unwrap();
            out.extend_from_slice(&word);
        }
        out
    }

    /// Sends BuildPaths and returns the whole answer.
    async fn build(&mut self, paths: &[DerivedPath], mode: WireMode) -> Vec<u8> {
        self.send(&Request::BuildPaths { paths: paths.to_vec(), mode }).await;
        self.answer_with_reply().await
    }

    /// Closes the client's side; the connection must end.
    async fn close(self) {
        drop(self.wr);
        drop(self.rd);
        tokio::time::timeout(DEADLINE, self.task).await.expect("the connection did not end").unwrap();
    }
}

/// A valid derivation `NAME.drv` of the in-memory store, with output `out` (valid if
/// `built`).
fn derivation(rig: &Rig, name: &str, built: bool) -> (StorePath, StorePath) {
    let drv = rig.valid_text(&format!("{name}.drv"), format!("Derive({name})").as_bytes()).path;
    let out = if built {
        rig.valid_text(name, b"built").path
    } else {
        rig.store().make_text_path(name, b"not built", []).unwrap()
    };
    rig.backend().state().outputs.insert(drv.clone(), [("out".to_owned(), out.clone())].into());
    (drv, out)
}

fn all(drv: &StorePath) -> DerivedPath {
    DerivedPath { path: drv.clone(), outputs: BTreeSet::new() }
}

fn log(pid: u32, s: &str) -> Step {
    Step::Send(BuildEvent::Log { pid, bytes: s.as_bytes().to_vec() })
}

fn msg(level: u32, s: &str) -> Step {
    Step::Send(BuildEvent::Message { level, text: s.to_owned() })
}

fn next(s: &str) -> StderrMsg {
    StderrMsg::Next(s.as_bytes().to_vec())
}

async fn frames(msgs: &[StderrMsg]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend(frame(m).await);
    }
    out
}

async fn done(store: &StoreDir) -> Vec<u8> {
    reply(store, Opcode::BuildPaths, &Reply::Done).await
}

fn options(verbosity: u32, build_verbosity: u32, overrides: &[(&str, &str)]) -> SetOptions {
    SetOptions {
        verbosity,
        build_verbosity,
        overrides: overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..SetOptions::default()
    }
}

fn limits(idle_ms: u64, unavailable_ms: u64) -> JobLimits {
    JobLimits {
        idle: Duration::from_millis(idle_ms),
        unavailable: Duration::from_millis(unavailable_ms),
        retry_pause: Duration::from_millis(20),
        ..JobLimits::default()
    }
}

fn job_of(req: &BuilderRequest) -> &guix_ipc::job::JobId {
    let BuilderRequest::Build { job, .. } = req;
    job
}

#[tokio::test]
async fn build_output_and_messages_reach_the_client_as_cxx_writes_them() {
    let rig = Rig::new();
    let (drv, out) = derivation(&rig, "hello", false);
    let script = vec![
        log(42, "building...\n"),
        msg(0, "@ build-started X - x86_64-linux /var/log/guix/drvs/xx//y.drv.gz 42"),
        msg(1, "an info message"),
        msg(2, "a talkative message"),
        Step::Send(BuildEvent::Alive),
        Step::Send(BuildEvent::Skipped(3)),
        Step::Reply(BuildReply::Done),
    ];
    let builder = serve_builder(&rig.builder_socket(), vec![script]);
    let mut opts = options(1, 1, &[("build-cores", "2"), ("foo", "bar")]);
    opts.keep_going = true;
    opts.keep_failed = true;
    let mut s = Session::open(&rig, ROOT, opts).await;
    let got = s.build(&[all(&drv)], WireMode::Normal).await;
    let want = cat([
        frames(&[
            next("building...\n"),
            next("@ build-started X - x86_64-linux /var/log/guix/drvs/xx//y.drv.gz 42\n"),
            next("an info message\n"),
            next(&format!("{}\n", crate::build::skipped_note(3))),
        ])
        .await,
        done(rig.store()).await,
    ]);
    assert_eq!(got, want);
    // What the builder was asked for.
    let calls = builder.calls();
    assert_eq!(calls.len(), 1);
    let BuilderRequest::Build { job, targets, mode, options } = &calls[0];
    assert!(job.0.contains(&format!("-{CONN:x}-")), "{job}");
    assert_eq!(targets, &vec![guix_ipc::builder::BuildTarget { drv: drv.clone(), outputs: vec![] }]);
    assert_eq!(*mode, BuildMode::Normal);
    assert!(options.keep_going && options.keep_failed && options.print_build_trace);
    assert_eq!(options.client_uid, Some(0));
    assert_eq!(options.settings.get("build-cores").map(String::as_str), Some("2"));
    assert_eq!(options.settings.get("foo").map(String::as_str), Some("bar"));
    // The derivation and its output are temp roots of the connection before the build.
    let roots = rig.backend().state().temp_roots.get(&CONN).cloned().unwrap();
    assert!(roots.contains(&drv) && roots.contains(&out), "{roots:?}");
    s.close().await;
}

#[tokio::test]
async fn build_output_is_hidden_below_the_build_verbosity() {
    let rig = Rig::new();
    let (drv, _) = derivation(&rig, "quiet", false);
    let script =
        vec![log(7, "hidden output\n"), msg(0, "shown at level 0"), msg(1, "hidden"), Step::Reply(BuildReply::Done)];
    let _builder = serve_builder(&rig.builder_socket(), vec![script]);
    // verbosity 0 < build verbosity 1: no build output; messages above 0 are hidden too.
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 1, &[])).await;
    let got = s.build(&[all(&drv)], WireMode::Normal).await;
    assert_eq!(got, cat([frames(&[next("shown at level 0\n")]).await, done(rig.store()).await]));
    // verbosity 2 ≥ 1: all of it.
    let mut s2 = Session::open(&rig, UNTRUSTED, options(2, 1, &[])).await;
    let got = s2.build(&[all(&drv)], WireMode::Normal).await;
    let want = frames(&[next("hidden output\n"), next("shown at level 0\n"), next("hidden\n")]).await;
    assert_eq!(got, cat([want, done(rig.store()).await]));
    s.close().await;
    s2.close().await;
}

#[tokio::test]
async fn multiplexed_build_output_is_prefixed_with_its_pid_and_length() {
    let rig = Rig::new();
    let (drv, _) = derivation(&rig, "mux", false);
    let script = vec![log(4242, "héllo\n"), msg(0, "@ build-succeeded X -"), Step::Reply(BuildReply::Done)];
    let _builder = serve_builder(&rig.builder_socket(), vec![script]);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[("multiplexed-build-output", "true")])).await;
    let got = s.build(&[all(&drv)], WireMode::Normal).await;
    // LEN counts bytes ("é" is two); daemon messages are not prefixed.
    let want = frames(&[next("@ build-log 4242 7\nhéllo\n"), next("@ build-succeeded X -\n")]).await;
    assert_eq!(got, cat([want, done(rig.store()).await]));
    s.close().await;
}

#[tokio::test]
async fn a_failed_build_is_an_error_with_the_builders_status_and_the_connection_stays() {
    for status in [100, 101] {
        let rig = Rig::new();
        let (drv, out) = derivation(&rig, "fails", false);
        let message = format!("build of `{}' failed", rig.store().display(&drv));
        let script = vec![
            msg(0, "builder for `X' failed with exit code 3"),
            Step::Reply(BuildReply::Failed { status, message: message.clone() }),
        ];
        let _builder = serve_builder(&rig.builder_socket(), vec![script]);
        let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
        let got = s.build(&[all(&drv)], WireMode::Normal).await;
        let want =
            frames(&[next("builder for `X' failed with exit code 3\n"), StderrMsg::Error { msg: message, status }])
                .await;
        assert_eq!(got, want, "status {status}");
        // The same connection serves the next request.
        s.send(&Request::IsValidPath(rig.store().display(&out))).await;
        assert_eq!(s.answer_with_reply().await, reply(rig.store(), Opcode::IsValidPath, &Reply::Bool(false)).await);
        s.close().await;
    }
}

#[tokio::test]
async fn a_builder_killed_mid_build_gets_the_same_job_again_and_the_client_success() {
    let rig = Rig::with_builder(limits(10_000, 10_000));
    let (drv, _) = derivation(&rig, "restart", false);
    let path = rig.builder_socket();
    let first = vec![log(1, "first run\n"), Step::Notify, Step::AwaitCancel];
    let mut old = serve_builder(&path, vec![first]);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    let build = async {
        s.send(&Request::BuildPaths { paths: vec![all(&drv)], mode: WireMode::Normal }).await;
        s.answer_with_reply().await
    };
    let restart = async {
        tokio::time::timeout(DEADLINE, old.notes.recv()).await.unwrap();
        // The builder dies (its connections close), and a new one serves the same socket.
        old.kill();
        tokio::time::sleep(Duration::from_millis(100)).await;
        serve_builder(&path, vec![vec![log(2, "second run\n"), Step::Reply(BuildReply::Done)]])
    };
    let (got, new) = tokio::join!(build, restart);
    let want = frames(&[next("first run\n"), next("second run\n")]).await;
    assert_eq!(got, cat([want, done(rig.store()).await]));
    let (a, b) = (old.calls(), new.calls());
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0], b[0], "the same Build, same job, was sent again");
    s.close().await;
}

#[tokio::test]
async fn a_builder_that_never_answers_fails_the_build_within_the_bound() {
    // Nothing at the socket at all, then a builder that accepts but never says anything.
    for serve_it in [false, true] {
        let rig = Rig::with_builder(limits(10_000, 1_000));
        let (drv, _) = derivation(&rig, "silent", false);
        let stand_in = serve_it.then(|| serve_builder(&rig.builder_socket(), vec![vec![Step::AwaitCancel]]));
        let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
        let start = Instant::now();
        let got = s.build(&[all(&drv)], WireMode::Normal).await;
        let waited = start.elapsed();
        let msg = "builder is unavailable: no answer within 1s".to_owned();
        assert_eq!(got, frames(&[StderrMsg::Error { msg, status: 1 }]).await);
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(5), "{waited:?}");
        if let Some(builder) = &stand_in {
            // Given up: the builder's call was cancelled.
            tokio::time::timeout(DEADLINE, async {
                while builder.cancelled().is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the abandoned call was not cancelled");
        }
        s.close().await;
    }
}

#[tokio::test]
async fn a_builder_not_there_at_first_contact_is_waited_for() {
    let rig = Rig::with_builder(limits(10_000, 10_000));
    let (drv, _) = derivation(&rig, "late", false);
    let path = rig.builder_socket();
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    let late = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        serve_builder(&path, vec![vec![log(3, "late\n"), Step::Reply(BuildReply::Done)]])
    };
    let paths = [all(&drv)];
    let (got, builder) = tokio::join!(s.build(&paths, WireMode::Normal), late);
    assert_eq!(got, cat([frames(&[next("late\n")]).await, done(rig.store()).await]));
    assert_eq!(builder.calls().len(), 1);
    s.close().await;
}

#[tokio::test]
async fn a_hung_builder_is_cancelled_and_asked_again() {
    let rig = Rig::with_builder(limits(300, 5_000));
    let (drv, _) = derivation(&rig, "hung", false);
    let scripts = vec![vec![log(5, "then silence\n"), Step::AwaitCancel], vec![Step::Reply(BuildReply::Done)]];
    let builder = serve_builder(&rig.builder_socket(), scripts);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    let got = s.build(&[all(&drv)], WireMode::Normal).await;
    assert_eq!(got, cat([frames(&[next("then silence\n")]).await, done(rig.store()).await]));
    let calls = builder.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(job_of(&calls[0]), job_of(&calls[1]));
    assert_eq!(builder.cancelled(), vec![0]);
    s.close().await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_build() {
    // Long limits: only the client's leaving can end the call.
    let rig = Rig::with_builder(limits(30_000, 30_000));
    let (drv, _) = derivation(&rig, "abandoned", false);
    let script = vec![log(6, "working\n"), Step::AwaitCancel];
    let builder = serve_builder(&rig.builder_socket(), vec![script]);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    s.send(&Request::BuildPaths { paths: vec![all(&drv)], mode: WireMode::Normal }).await;
    let first = tokio::time::timeout(DEADLINE, read_stderr(&mut s.rd, V, &Limits::DEFAULT)).await.unwrap().unwrap();
    assert_eq!(first, next("working\n"));
    let start = Instant::now();
    s.close().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while builder.cancelled().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the build was not cancelled when its client left");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(builder.calls().len(), 1);
}

#[tokio::test]
async fn valid_outputs_need_no_builder_but_check_and_repair_do() {
    let rig = Rig::new();
    let (drv, out) = derivation(&rig, "built", true);
    let builder = serve_builder(&rig.builder_socket(), vec![vec![Step::Reply(BuildReply::Done)]]);
    let mut s = Session::open(&rig, ROOT, options(0, 0, &[])).await;
    let wanted = DerivedPath { path: drv.clone(), outputs: ["out".to_owned()].into() };
    assert_eq!(s.build(std::slice::from_ref(&wanted), WireMode::Normal).await, done(rig.store()).await);
    assert!(builder.calls().is_empty(), "the fast path called the builder");
    let roots = rig.backend().state().temp_roots.get(&CONN).cloned().unwrap();
    assert!(roots.contains(&drv) && roots.contains(&out), "{roots:?}");
    // A plain item is not built (no substituter: C++ answers 1 too).
    assert_eq!(s.build(&[all(&out)], WireMode::Normal).await, done(rig.store()).await);
    assert!(builder.calls().is_empty());
    // Check and Repair (root) always go to the builder.
    assert_eq!(s.build(std::slice::from_ref(&wanted), WireMode::Check).await, done(rig.store()).await);
    assert_eq!(s.build(std::slice::from_ref(&wanted), WireMode::Repair).await, done(rig.store()).await);
    let modes: Vec<BuildMode> = builder.calls().iter().map(|BuilderRequest::Build { mode, .. }| *mode).collect();
    assert_eq!(modes, [BuildMode::Check, BuildMode::Repair]);
    let calls = builder.calls();
    assert_ne!(job_of(&calls[0]), job_of(&calls[1]), "each BuildPaths is a new job");
    s.close().await;
}

#[tokio::test]
async fn repair_by_an_untrusted_client_is_refused_and_closes() {
    let rig = Rig::new();
    let (drv, _) = derivation(&rig, "repair", false);
    let builder = serve_builder(&rig.builder_socket(), vec![vec![Step::Reply(BuildReply::Done)]]);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    let got = s.build(&[all(&drv)], WireMode::Repair).await;
    assert_eq!(got, error("repairing is a privileged operation").await);
    assert!(builder.calls().is_empty());
    // Closed by the daemon.
    tokio::time::timeout(DEADLINE, s.task).await.expect("the connection was kept").unwrap();
}

#[tokio::test]
async fn a_builder_that_says_try_again_is_asked_again() {
    let rig = Rig::with_builder(limits(10_000, 10_000));
    let (drv, _) = derivation(&rig, "retry", false);
    let scripts = vec![
        vec![Step::Reply(BuildReply::Error(LinkError::retryable("shutting down")))],
        vec![Step::Reply(BuildReply::Done)],
    ];
    let builder = serve_builder(&rig.builder_socket(), scripts);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    assert_eq!(s.build(&[all(&drv)], WireMode::Normal).await, done(rig.store()).await);
    assert_eq!(builder.calls().len(), 2);
    s.close().await;
}

#[tokio::test]
async fn a_client_error_from_the_builder_is_shown_as_it_is() {
    let rig = Rig::new();
    let (drv, _) = derivation(&rig, "bad", false);
    let scripts = vec![vec![Step::Reply(BuildReply::Error(LinkError::client("path `x' is not valid")))]];
    let builder = serve_builder(&rig.builder_socket(), scripts);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    assert_eq!(s.build(&[all(&drv)], WireMode::Normal).await, error("path `x' is not valid").await);
    let internal = vec![vec![Step::Reply(BuildReply::Error(LinkError::internal("EIO")))]];
    drop(builder);
    let _builder = serve_builder(&rig.builder_socket(), internal);
    assert_eq!(s.build(&[all(&drv)], WireMode::Normal).await, error("internal error in builder: EIO").await);
    s.close().await;
}

/// A client that sends its next request before the build's answer (pipelining, which the
/// C++ daemon serves from its read buffer) is not taken for gone: the build goes on, and the
/// next request is answered after it.
#[tokio::test]
async fn bytes_sent_during_a_build_are_the_next_request() {
    let rig = Rig::new();
    let (drv, out) = derivation(&rig, "pipelined", false);
    // The next request reaches socket-front while the build runs.
    let script = vec![
        Step::Notify,
        Step::Sleep(Duration::from_millis(300)),
        log(8, "still building\n"),
        Step::Reply(BuildReply::Done),
    ];
    let mut builder = serve_builder(&rig.builder_socket(), vec![script]);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    s.send(&Request::BuildPaths { paths: vec![all(&drv)], mode: WireMode::Normal }).await;
    tokio::time::timeout(DEADLINE, builder.notes.recv()).await.unwrap();
    s.send(&Request::IsValidPath(rig.store().display(&out))).await;
    let got = s.answer_with_reply().await;
    assert_eq!(got, cat([frames(&[next("still building\n")]).await, done(rig.store()).await]));
    assert_eq!(s.answer_with_reply().await, reply(rig.store(), Opcode::IsValidPath, &Reply::Bool(false)).await);
    assert!(builder.cancelled().is_empty());
    s.close().await;
}

#[tokio::test]
async fn a_builder_killed_for_good_fails_the_build_within_the_bound() {
    let rig = Rig::with_builder(limits(10_000, 1_000));
    let (drv, _) = derivation(&rig, "dead", false);
    let mut builder = serve_builder(&rig.builder_socket(), vec![vec![log(1, "started\n"), Step::AwaitCancel]]);
    let mut s = Session::open(&rig, UNTRUSTED, options(0, 0, &[])).await;
    s.send(&Request::BuildPaths { paths: vec![all(&drv)], mode: WireMode::Normal }).await;
    let first = tokio::time::timeout(DEADLINE, read_stderr(&mut s.rd, V, &Limits::DEFAULT)).await.unwrap().unwrap();
    assert_eq!(first, next("started\n"));
    let killed = Instant::now();
    builder.kill();
    let last = tokio::time::timeout(DEADLINE, read_stderr(&mut s.rd, V, &Limits::DEFAULT)).await.unwrap().unwrap();
    let waited = killed.elapsed();
    let StderrMsg::Error { msg, status: 1 } = last else { panic!("{last:?}") };
    assert!(msg.starts_with("builder is unavailable: no answer within 1s (the stream was cut"), "{msg}");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(5), "{waited:?}");
    s.close().await;
}
