//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;

use guix_formats::{HashAlgo, StoreDir, StorePath};
use guix_store_db::{DbOptions, DbReader, DbWriter, InitOptions, Registration, StateDirs, StoreLock, ValidPathInfo};

pub struct Store {
    pub dirs: StateDirs,
    pub lock: StoreLock,
    pub writer: DbWriter,
}

pub fn fresh(root: &Path) -> Store {
    let dirs = StateDirs::under(root);
    let lock = dirs.init(&InitOptions { reserve_space: false, ..InitOptions::default() }).expect("init");
    let writer = DbWriter::open(dirs.db_dir(), StoreDir::default(), &lock, &DbOptions::default()).expect("open writer");
    Store { dirs, lock, writer }
}

pub fn reader(root: &Path) -> DbReader {
    DbReader::open(&root.join("var-guix/db"), StoreDir::default()).expect("open reader")
}

/// A path named `name` whose hash part is derived from `name`.
pub fn sp(name: &str) -> StorePath {
    StoreDir::default().make_text_path(name, name.as_bytes(), std::iter::empty::<&StorePath>()).expect("path")
}

pub fn info(path: &StorePath, refs: &[&StorePath]) -> ValidPathInfo {
    ValidPathInfo {
        path: path.clone(),
        deriver: None,
        nar_hash: HashAlgo::Sha256.digest(path.name().as_bytes()),
        references: refs.iter().map(|r| (*r).clone()).collect::<BTreeSet<_>>(),
        registration_time: 1_700_000_000,
        nar_size: Some(120),
    }
}

pub fn reg(path: &StorePath, refs: &[&StorePath]) -> Registration {
    Registration::new(info(path, refs)).expect("registration")
}
