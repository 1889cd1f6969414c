//! OptimiseStore (34): deduplication of every valid path through `<store>/.links`.
//!
//! The deduplication itself is `guix_store::optimise::optimise_store` (written on another
//! branch). Until it is merged, [`optimise_store`] stands in for it with the same signature and
//! fails with "deduplication is not built yet"; the integrator switches the call.

use std::io;
use std::path::{Path, PathBuf};

/// What an optimisation did (stand-in for `guix_store::optimise::OptimiseStats`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OptimiseStats;

/// Stand-in for `guix_store::optimise::optimise_store`.
pub fn optimise_store(
    _store_dir: &Path,
    _links_dir: &Path,
    _paths: &mut dyn Iterator<Item = PathBuf>,
    _log: &mut dyn FnMut(u32, String),
) -> io::Result<OptimiseStats> {
    Err(io::Error::other("deduplication is not built yet"))
}
