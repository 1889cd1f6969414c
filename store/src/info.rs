//! What the database says about one store path, and what a caller hands in to register one.

use std::collections::{BTreeMap, BTreeSet};

use guix_formats::{Hash, HashAlgo, StorePath};

use crate::error::{Error, Result};

/// One row of `ValidPaths` with its references (`ValidPathInfo` without the row id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    pub path: StorePath,
    /// The derivation that built the path, if known (`deriver` column, NULL when unknown).
    pub deriver: Option<StorePath>,
    /// SHA-256 of the NAR serialisation (`hash` column, `sha256:<base16>`).
    pub nar_hash: Hash,
    /// Sorted, may contain the path itself.
    pub references: BTreeSet<StorePath>,
    /// Seconds since the epoch. When registering, 0 means "now", as in the C++ daemon.
    pub registration_time: i64,
    /// Size of the NAR serialisation; `None` is SQL NULL ("unknown", the C++ daemon reads it as
    /// 0). When registering, `Some(0)` is stored as NULL too, as in the C++ daemon.
    pub nar_size: Option<u64>,
}

/// Output name → output path, as listed in a derivation (`DerivationOutputs` rows).
pub type DerivationOutputs = BTreeMap<String, StorePath>;

/// A path to register: its info, plus the outputs of the derivation when the path is a `.drv`.
///
/// The C++ daemon reads every registered `.drv` from disk and stores its outputs; here the
/// caller parses the derivation and passes the outputs, and the constructors make sure a `.drv`
/// always comes with them and nothing else does. The hash must be SHA-256 (the C++ daemon
/// asserts this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    info: ValidPathInfo,
    outputs: Option<DerivationOutputs>,
}

impl Registration {
    /// A path that is not a derivation.
    pub fn new(info: ValidPathInfo) -> Result<Registration> {
        check_hash(&info)?;
        if info.path.is_derivation() {
            return Err(Error::BadRegistration {
                path: info.path.to_string(),
                reason: "a derivation must be registered with its outputs",
            });
        }
        Ok(Registration { info, outputs: None })
    }

    /// A derivation (`.drv`) with the outputs it declares.
    pub fn derivation(info: ValidPathInfo, outputs: DerivationOutputs) -> Result<Registration> {
        check_hash(&info)?;
        if !info.path.is_derivation() {
            return Err(Error::BadRegistration {
                path: info.path.to_string(),
                reason: "only a derivation has outputs",
            });
        }
        Ok(Registration { info, outputs: Some(outputs) })
    }

    pub fn info(&self) -> &ValidPathInfo {
        &self.info
    }

    /// The derivation outputs, for a `.drv`.
    pub fn derivation_outputs(&self) -> Option<&DerivationOutputs> {
        self.outputs.as_ref()
    }

    pub fn into_parts(self) -> (ValidPathInfo, Option<DerivationOutputs>) {
        (self.info, self.outputs)
    }
}

fn check_hash(info: &ValidPathInfo) -> Result<()> {
    if info.nar_hash.algo() != HashAlgo::Sha256 {
        return Err(Error::BadRegistration { path: info.path.to_string(), reason: "the NAR hash must be SHA-256" });
    }
    if info.nar_size.is_some_and(|n| i64::try_from(n).is_err()) {
        return Err(Error::BadRegistration { path: info.path.to_string(), reason: "NAR size too large" });
    }
    Ok(())
}
