//! ATerm derivations (`Derivation::parse`), as store-db reads every `.drv` a client adds,
//! then the daemon's `checkDerivationOutputs` on it (fixed-output hashes, modulo hashes)
//! with a loader that hands back the same derivation for every input, so that any input
//! makes a cycle the hasher must report rather than loop on. Also the `drv!out,…` syntax of
//! BuildPaths (`DerivedPath::parse`). Properties: the parser accepts only the canonical form
//! (`to_aterm` reproduces the input byte for byte); a DerivedPath prints and parses back.
#![no_main]

use guix_formats::derivation::{Derivation, DerivedPath, ModuloHasher};
use guix_formats::{StoreDir, StorePath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let store = StoreDir::default();
    if let Ok(drv) = Derivation::parse(&store, data) {
        assert_eq!(drv.to_aterm(&store), data);
        for out in drv.outputs.values() {
            let _ = out.fixed_hash();
        }
        if let Ok(path) = drv.drv_path(&store, "fuzz") {
            let mut hasher = ModuloHasher::new(|_: &StorePath| Ok::<_, ()>(drv.clone()));
            let checked = drv.check_outputs(&store, &path, &mut hasher);
            if !drv.input_drvs.is_empty() && !drv.is_fixed_output() {
                assert!(checked.is_err(), "a cycle of input derivations went unnoticed");
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(dp) = DerivedPath::parse(&store, s) {
            assert_eq!(DerivedPath::parse(&store, &dp.display(&store)).ok(), Some(dp));
        }
    }
});
