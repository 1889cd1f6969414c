//! The store items running processes use: what `guix gc --list-busy` prints (Guile's
//! `busy-store-items`, `guix/store/roots.scm`), computed natively instead of starting Guile as
//! C++ `addAdditionalRoots` does. The C++ collector adds those that are valid to its roots.
//!
//! Per process (`/proc/PID`, numeric names): the targets of `exe`, `cwd` and every `fd/N`
//! (absolute ones; unreadable links skipped), the file of every `maps` line (`^.*[[:blank:]]+
//! /([^ ]+)$`), and in `environ` every `<store>/<32 chars of [0-9a-z]>-<[a-zA-Z0-9._+-]+>` in the
//! value of a `NAME=VALUE`. A process whose `maps` or `environ` cannot be read (gone: ENOENT,
//! ESRCH; or EACCES) counts for nothing, as in Guile; any other error fails. Each file becomes
//! the store item it is in. `compat_gc` compares the result with `guix gc --list-busy` in the
//! rig (`guix-gc --list-busy` prints it).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

/// The base names of the store items under `store` that the processes of `proc_dir` use.
pub fn busy_store_items(proc_dir: &Path, store: &str) -> io::Result<BTreeSet<String>> {
    let mut pids: Vec<u64> =
        fs::read_dir(proc_dir)?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    let mut items = BTreeSet::new();
    for pid in pids {
        match process_files(&proc_dir.join(pid.to_string()), store) {
            Ok(files) => items.extend(files.iter().filter_map(|f| store_item(f, store))),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH | libc::EACCES)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(items)
}

fn link(path: &Path) -> Option<String> {
    fs::read_link(path).ok().map(|t| t.to_string_lossy().into_owned())
}

fn process_files(dir: &Path, store: &str) -> io::Result<Vec<String>> {
    let mut files: Vec<String> = ["exe", "cwd"].iter().filter_map(|f| link(&dir.join(f))).collect();
    if let Ok(fds) = fs::read_dir(dir.join("fd")) {
        for e in fds.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.parse::<u64>().is_ok()) {
                files.extend(link(&e.path()).filter(|t| t.starts_with('/')));
            }
        }
    }
    let maps = fs::read(dir.join("maps"))?;
    files.extend(String::from_utf8_lossy(&maps).lines().filter_map(mapped_file));
    let environ = fs::read(dir.join("environ"))?;
    for var in String::from_utf8_lossy(&environ).split('\0').filter(|v| !v.is_empty()) {
        if let Some((_, value)) = var.split_once('=') {
            files.extend(store_names_in(value, store));
        }
    }
    Ok(files)
}

/// The file of a `maps` line: `^.*[[:blank:]]+/([^ ]+)$`, greedy (the last candidate).
fn mapped_file(line: &str) -> Option<String> {
    let b = line.as_bytes();
    (1..b.len()).rev().find_map(|p| {
        let ok = b[p] == b'/' && matches!(b[p - 1], b' ' | b'\t') && p + 1 < b.len() && !b[p + 1..].contains(&b' ');
        ok.then(|| line[p..].to_owned())
    })
}

/// Every match of `<store>/[0-9a-z]{32}-[a-zA-Z0-9._+-]+` in `s`, leftmost first, not
/// overlapping.
fn store_names_in(s: &str, store: &str) -> Vec<String> {
    let prefix = format!("{store}/");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find(&prefix) {
        let start = i + off;
        let h = start + prefix.len();
        let hash_ok = b.len() > h + 32
            && b[h..h + 32].iter().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            && b[h + 32] == b'-';
        let name_len = if hash_ok {
            b[h + 33..].iter().take_while(|c| c.is_ascii_alphanumeric() || b"._+-".contains(c)).count()
        } else {
            0
        };
        if name_len > 0 {
            let end = h + 33 + name_len;
            out.push(s[start..end].to_owned());
            i = end;
        } else {
            i = start + 1;
        }
    }
    out
}

/// `canonicalize-store-item`: the base name of the store item `file` is in.
fn store_item(file: &str, store: &str) -> Option<String> {
    let rest = file.strip_prefix(store)?.strip_prefix('/')?;
    let base = rest.split('/').next().unwrap_or(rest);
    (!base.is_empty()).then(|| base.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn maps_lines() {
        let l = "7f1c0000-7f1c2000 r--p 00000000 08:01 123   /gnu/store/x-glibc/lib/libc.so.6";
        assert_eq!(mapped_file(l).as_deref(), Some("/gnu/store/x-glibc/lib/libc.so.6"));
        assert_eq!(mapped_file("7f1c0000-7f1c2000 rw-p 00000000 00:00 0"), None);
        assert_eq!(mapped_file("7ffd-7ffe rw-p 00000000 00:00 0   [stack]"), None);
        assert_eq!(mapped_file("a b /gnu/store/x-y/lib (deleted)"), None);
    }

    #[test]
    fn environment_values() {
        let v = format!("/gnu/store/{H}-bash-5.1/bin:/x:/gnu/store/{H}-a+b_c.d-1/sbin:/gnu/store/short-x");
        assert_eq!(
            store_names_in(&v, "/gnu/store"),
            vec![format!("/gnu/store/{H}-bash-5.1"), format!("/gnu/store/{H}-a+b_c.d-1")]
        );
        assert!(store_names_in(&format!("/gnu/store/{H}-"), "/gnu/store").is_empty());
        assert_eq!(store_item(&format!("/gnu/store/{H}-x/bin/sh"), "/gnu/store"), Some(format!("{H}-x")));
        assert_eq!(store_item("/gnu/storex/a", "/gnu/store"), None);
    }

    /// This process's cwd, an open file and an environment variable, seen in /proc.
    #[test]
    fn a_process_using_a_fake_store() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let item = store.join(format!("{H}-item"));
        fs::create_dir_all(item.join("sub")).unwrap();
        let file = store.join(format!("{H}-file"));
        fs::write(&file, b"x").unwrap();
        let store_s = store.to_string_lossy().into_owned();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(item.join("sub"))
            .env("SOME_PATH", format!("/x:{store_s}/{H}-envitem/bin"))
            .stdin(fs::File::open(&file).unwrap())
            .spawn()
            .unwrap();
        // The child's exec is done once its exe is sleep's.
        let exe = Path::new("/proc").join(child.id().to_string()).join("exe");
        for _ in 0..100 {
            if link(&exe).is_some_and(|t| t.ends_with("sleep")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let busy = busy_store_items(Path::new("/proc"), &store_s).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let want: BTreeSet<String> = ["item", "file", "envitem"].iter().map(|n| format!("{H}-{n}")).collect();
        assert_eq!(busy, want);
    }
}
