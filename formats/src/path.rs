//! Absolute file names normalised as the C++ daemon does (`canonPath` and `absPath` of
//! libutil, without symlink resolution). Pure text: nothing here looks at the file system.
//!
//! The one copy for every component: the supervisor reading the directories from the
//! environment and `--listen`, store-db making `gcroots/auto` links, socket-front taking the
//! client's file names.

use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// `canonPath` of a relative (or empty) name; the message is the C++ daemon's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not an absolute path: `{}'", .0.display())]
pub struct NotAbsolute(pub PathBuf);

/// `canonPath(path)`: an absolute name with no `.`, `..` (each removes the component before
/// it; at the root it does nothing), repeated or trailing slashes. A relative name, the empty
/// one included, is an error, as in C++.
pub fn canon_path(path: impl AsRef<Path>) -> Result<PathBuf, NotAbsolute> {
    let path = path.as_ref();
    if !path.has_root() {
        return Err(NotAbsolute(path.to_owned()));
    }
    Ok(lexical(path))
}

/// `absPath(path, dir)`: `path` taken relative to the absolute directory `dir` when it is
/// relative, then [`canon_path`]. Never fails: the result is rooted at `/` whatever `dir` is.
pub fn abs_path(path: impl AsRef<Path>, dir: &Path) -> PathBuf {
    let path = path.as_ref();
    if path.has_root() {
        lexical(path)
    } else {
        lexical(&Path::new("/").join(dir).join(path))
    }
}

fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canon_path_like_cxx() {
        for (input, want) in [
            ("/", "/"),
            ("//", "/"),
            ("/a//b/./c/../store/", "/a/b/store"),
            ("/..", "/"),
            ("/a/../../b", "/b"),
            ("/a/.b/..c", "/a/.b/..c"),
            ("/st/./a/../b", "/st/b"),
        ] {
            assert_eq!(canon_path(input), Ok(PathBuf::from(want)), "{input}");
        }
        for bad in ["", "rel", "./x", "../x"] {
            assert_eq!(canon_path(bad), Err(NotAbsolute(bad.into())), "{bad:?}");
        }
        assert_eq!(NotAbsolute("rel".into()).to_string(), "not an absolute path: `rel'");
    }

    #[test]
    fn abs_path_relative_to_a_directory() {
        assert_eq!(abs_path("x/../y", Path::new("/")), PathBuf::from("/y"));
        assert_eq!(abs_path("", Path::new("/")), PathBuf::from("/"));
        assert_eq!(abs_path("../../..", Path::new("/a")), PathBuf::from("/"));
        assert_eq!(abs_path("b", Path::new("/a/")), PathBuf::from("/a/b"));
        assert_eq!(abs_path("/abs/./p", Path::new("/a")), PathBuf::from("/abs/p"));
    }
}
