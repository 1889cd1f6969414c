//! guix-client-demo: talks to a Guix daemon with the Rust client and prints each operation and
//! its answer. Connects to the socket given as the only argument, else `$GUIX_DAEMON_SOCKET`,
//! else /var/guix/daemon-socket/socket. It adds a few items to the store (use a scratch store,
//! e.g. `scripts/rig run --host -- guix-client-demo`).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use guix_client::{ClientError, DaemonClient, LogSink, SetOptions};
use guix_formats::hash::{sha256, HashAlgo};
use guix_formats::store_path::{StoreDir, StorePath};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let socket = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("GUIX_DAEMON_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(guix_client::DEFAULT_SOCKET));
    match run(&socket).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guix-client-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn show_set(sd: &StoreDir, set: &BTreeSet<StorePath>) -> String {
    if set.is_empty() {
        return "(none)".into();
    }
    set.iter().map(|p| sd.display(p)).collect::<Vec<_>>().join(", ")
}

/// A small tree on the host to add: a file, an executable, a symlink and a subdirectory.
fn make_tree(root: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("sub"))?;
    std::fs::write(root.join("a.txt"), "hello\n")?;
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n")?;
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(root.join("sub/deep"), "deep\n")?;
    std::os::unix::fs::symlink("a.txt", root.join("link"))?;
    Ok(())
}

async fn run(socket: &Path) -> Res<()> {
    let mut c = DaemonClient::connect(socket).await?;
    println!("connected to {} (daemon protocol {:#x})", socket.display(), c.server_version());
    c.set_log_sink(LogSink::Discard);
    c.set_options(&SetOptions::default()).await?;
    println!("SetOptions: Guile's defaults accepted");

    let base = c.add_text_to_store("demo-base.txt", b"the base item\n", &BTreeSet::new()).await?;
    let sd = c.store_dir().clone();
    println!("AddTextToStore demo-base.txt -> {}", sd.display(&base));
    let text = format!("this item refers to {}\n", sd.display(&base));
    let referring = c.add_text_to_store("demo-ref.txt", text.as_bytes(), &[base.clone()].into()).await?;
    println!("AddTextToStore demo-ref.txt (references the base) -> {}", sd.display(&referring));

    let scratch = std::env::temp_dir().join(format!("guix-client-demo.{}", std::process::id()));
    make_tree(&scratch.join("tree"))?;
    std::fs::write(scratch.join("flat.txt"), "a flat file\n")?;
    let tree = c.add_to_store("demo-tree", &scratch.join("tree"), true, HashAlgo::Sha256).await;
    let flat = c.add_to_store("demo-flat.txt", &scratch.join("flat.txt"), false, HashAlgo::Sha256).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (tree, flat) = (tree?, flat?);
    println!("AddToStore demo-tree (recursive, sha256) -> {}", sd.display(&tree));
    println!("AddToStore demo-flat.txt (flat, sha256) -> {}", sd.display(&flat));

    let all = [base.clone(), referring.clone(), tree.clone(), flat.clone()];
    for p in &all {
        match c.query_path_info(p).await? {
            Some(i) => println!(
                "QueryPathInfo {}: narHash sha256:{} narSize {} references [{}] deriver {} registered {}",
                sd.display(p),
                i.nar_hash.to_base16(),
                i.nar_size,
                i.references.iter().map(|r| sd.display(r)).collect::<Vec<_>>().join(", "),
                i.deriver.map(|d| sd.display(&d)).unwrap_or_else(|| "(none)".into()),
                i.registration_time
            ),
            None => println!("QueryPathInfo {}: not valid", sd.display(p)),
        }
    }
    let missing = StorePath::from_base_name("00000000000000000000000000000000-missing")?;
    println!(
        "QueryPathInfo {}: {}",
        sd.display(&missing),
        if c.query_path_info(&missing).await?.is_none() { "not valid (None)" } else { "valid?!" }
    );
    let mut ask: BTreeSet<StorePath> = all.iter().cloned().collect();
    ask.insert(missing.clone());
    let valid = c.query_valid_paths(&ask).await?;
    println!("QueryValidPaths of the four items and one missing -> {} valid", valid.len());
    println!("IsValidPath {} -> {}", sd.display(&tree), c.is_valid_path(&sd.display(&tree)).await?);
    println!("QueryReferences {} -> {}", sd.display(&referring), show_set(&sd, &c.query_references(&referring).await?));
    println!("QueryReferrers {} -> {}", sd.display(&base), show_set(&sd, &c.query_referrers(&base).await?));
    let deriver = c.query_deriver(&tree).await?;
    println!(
        "QueryDeriver {} -> {}",
        sd.display(&tree),
        deriver.map(|d| sd.display(&d)).unwrap_or_else(|| "(none)".into())
    );
    println!("QueryPathHash {} -> {}", sd.display(&flat), c.query_path_hash(&flat).await?.to_base16());
    println!(
        "QueryPathFromHashPart {} -> {}",
        tree.hash_part(),
        c.query_path_from_hash_part(tree.hash_part().as_str()).await?.map(|p| sd.display(&p)).unwrap_or_default()
    );

    for sign in [false, true] {
        let mut out = Vec::new();
        match c.export_path(&tree, sign, &mut out).await {
            Ok(()) => println!(
                "ExportPath {} sign={sign} -> {} bytes, sha256 {}",
                sd.display(&tree),
                out.len(),
                guix_formats::hash::base16_encode(&sha256(&out))
            ),
            Err(ClientError::Daemon { message, .. }) => {
                println!("ExportPath {} sign={sign} -> daemon error: {message}", sd.display(&tree))
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("BuiltinBuilders -> {:?}", c.builtin_builders().await?);
    println!("done");
    Ok(())
}
