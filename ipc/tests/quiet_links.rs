//! Both ends of a link are registered for readability only (`guix_ipc::quiet`): a peer that
//! reads what we sent must not wake us. A test binary of its own, so that no other test's
//! sockets are in the process while it looks at every socket there.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use guix_ipc::quiet::watched_events;
use guix_ipc::{serve_connection, Call, Client, Handler, LinkRequest, LinkSpec};
use serde::{Deserialize, Serialize};

const SPEC: LinkSpec = LinkSpec { name: "quiet-test", version: 1 };
const EPOLLOUT: u32 = 0x4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping(u32);

impl LinkRequest for Ping {
    fn idempotent(&self) -> bool {
        true
    }
}

struct Echo;

impl Handler for Echo {
    type Req = Ping;
    type Resp = u32;
    type Item = ();
    fn handle(self: &Arc<Self>, _call: Call<()>, req: Ping) -> impl Future<Output = u32> + Send + 'static {
        std::future::ready(req.0 + 1)
    }
}

/// This process's descriptors that are sockets.
fn sockets() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn neither_end_of_a_link_is_registered_for_writability() {
    // The runtime's own (its signal driver's).
    let before = sockets();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("link.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let listener_fd = listener.as_raw_fd();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_connection(s, SPEC, "quiet-server", Arc::new(Echo)));
        }
    });
    let client: Client<Ping, u32, ()> = Client::new(&path, SPEC, "quiet-client", Duration::from_secs(10));
    for i in 0..10 {
        assert_eq!(client.call(Ping(i)).await.unwrap(), i + 1);
    }
    let link: Vec<(RawFd, Vec<u32>)> = sockets()
        .into_iter()
        .filter(|fd| *fd != listener_fd && !before.contains(fd))
        .map(|fd| (fd, watched_events(fd).unwrap()))
        .filter(|(_, masks)| !masks.is_empty())
        .collect();
    assert_eq!(link.len(), 2, "the client's and the server's socket, registered with the runtime: {link:x?}");
    for (fd, masks) in &link {
        assert!(masks.iter().all(|m| m & EPOLLOUT == 0), "socket {fd} is watched for writability: {masks:x?}");
    }
}
