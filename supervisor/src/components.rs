//! The table of components: which programs the supervisor runs and which sockets each serves.
//!
//! Adding a component (gc) is one more row: its name, and the sockets it
//! is given. `SocketRole::Link(name)` makes the supervisor create the internal link socket
//! `$GUIX_STATE_DIRECTORY/daemon-rs/NAME.sock` and pass it to this component, which serves it;
//! other components reach it with `guix_ipc::component::connect_link`.

use std::path::{Path, PathBuf};

/// What a socket passed to a component is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRole {
    /// Every client socket (passed under the name `client`).
    Clients,
    /// The internal link of that name, served by this component.
    Link(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentSpec {
    pub name: &'static str,
    pub sockets: &'static [SocketRole],
    /// Runs as socket-front's own user, without capabilities, when there is one
    /// ([`crate::privileges`]); else as the supervisor's user.
    pub unprivileged: bool,
}

impl ComponentSpec {
    /// The program: `guix-NAME` in the libexec directory.
    pub fn binary(&self, libexec: &Path) -> PathBuf {
        libexec.join(format!("guix-{}", self.name))
    }
}

/// The components, in start order (servers of links before their clients).
pub const COMPONENTS: &[ComponentSpec] = &[
    ComponentSpec { name: "store-db", sockets: &[SocketRole::Link("store-db")], unprivileged: false },
    // Registers build outputs through store-db; socket-front sends it BuildPaths. It is also
    // a client of the substituter (started after it: every link socket exists before any
    // component starts, so a connection waits in the queue of the socket).
    ComponentSpec { name: "builder", sockets: &[SocketRole::Link("builder")], unprivileged: false },
    // Registers substitutes through store-db; socket-front sends it queries and substitutions,
    // the builder substitutions of derivation outputs and input sources.
    ComponentSpec { name: "substituter", sockets: &[SocketRole::Link("substituter")], unprivileged: false },
    // Deletes through store-db; socket-front sends it CollectGarbage and OptimiseStore.
    ComponentSpec { name: "gc", sockets: &[SocketRole::Link("gc")], unprivileged: false },
    ComponentSpec { name: "socket-front", sockets: &[SocketRole::Clients], unprivileged: true },
];

/// Every internal link some component serves.
pub fn links(table: &[ComponentSpec]) -> impl Iterator<Item = &'static str> + '_ {
    table.iter().flat_map(|c| c.sockets.iter()).filter_map(|r| match r {
        SocketRole::Link(l) => Some(*l),
        SocketRole::Clients => None,
    })
}

/// Where component programs are: `--rs-libexec-dir`, else `GUIX_DAEMON_RS_LIBEXEC_DIR`, else the
/// directory of our own executable.
pub fn libexec_dir(option: Option<&Path>, env: Option<String>) -> std::io::Result<PathBuf> {
    if let Some(d) = option {
        return Ok(d.to_owned());
    }
    if let Some(d) = env.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    Ok(exe.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let l: Vec<_> = links(COMPONENTS).collect();
        assert_eq!(l, vec!["store-db", "builder", "substituter", "gc"]);
        assert_eq!(COMPONENTS[0].binary(Path::new("/x")), PathBuf::from("/x/guix-store-db"));
        assert_eq!(COMPONENTS[1].binary(Path::new("/x")), PathBuf::from("/x/guix-builder"));
        // Servers of links start before their clients: store-db, then the builder, the
        // substituter and the gc (clients of store-db), then socket-front (a client of all).
        let order: Vec<_> = COMPONENTS.iter().map(|c| c.name).collect();
        assert_eq!(order, ["store-db", "builder", "substituter", "gc", "socket-front"]);
        assert_eq!(guix_ipc::builder::BUILDER_LINK.name, "builder");
        assert_eq!(guix_ipc::substituter::SUBSTITUTER_LINK.name, "substituter");
        assert_eq!(guix_ipc::gc::GC_LINK.name, "gc");
        // Exactly one component serves the clients, and link names are unique.
        assert_eq!(COMPONENTS.iter().filter(|c| c.sockets.contains(&SocketRole::Clients)).count(), 1);
        let mut sorted = l.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), l.len());
        // Only socket-front drops its privileges (the builder needs root for build users and
        // chroots, store-db owns the store, the gc deletes from it, the substituter writes
        // scratch items store-db trusts).
        let unprivileged: Vec<_> = COMPONENTS.iter().filter(|c| c.unprivileged).map(|c| c.name).collect();
        assert_eq!(unprivileged, ["socket-front"]);
        // store-db's temp-root barrier waits for each root holder: each must be a component.
        for h in guix_ipc::store_db::ROOT_HOLDERS {
            assert!(COMPONENTS.iter().any(|c| c.name == *h), "root holder `{h}' is not a component");
        }
    }

    #[test]
    fn libexec_precedence() {
        assert_eq!(libexec_dir(Some(Path::new("/o")), Some("/e".into())).unwrap(), PathBuf::from("/o"));
        assert_eq!(libexec_dir(None, Some("/e".into())).unwrap(), PathBuf::from("/e"));
        assert!(libexec_dir(None, None).unwrap().is_absolute());
    }
}
