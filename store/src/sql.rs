//! The SQL the C++ daemon runs, verbatim, so that both daemons read and write the same rows
//! the same way (`LocalStore::openDB`).

/// `schema.sql`: the statements that create a fresh database. The text stored in
/// `sqlite_master` is identical to what the C++ daemon 1.5.0 stores (checked by a test).
pub const SCHEMA: &str = include_str!("schema.sql");

pub const REGISTER_VALID_PATH: &str =
    "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?, ?, ?, ?, ?);";
pub const UPDATE_PATH_INFO: &str = "update ValidPaths set narSize = ?, hash = ? where path = ?;";
pub const ADD_REFERENCE: &str = "insert or replace into Refs (referrer, reference) values (?, ?);";
pub const QUERY_PATH_INFO: &str = "select id, hash, registrationTime, deriver, narSize from ValidPaths where path = ?;";
pub const QUERY_REFERENCES: &str = "select path from Refs join ValidPaths on reference = id where referrer = ?;";
pub const QUERY_REFERRERS: &str = "select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?);";
pub const INVALIDATE_PATH: &str = "delete from ValidPaths where path = ?;";
/// The collector's batch invalidation (not C++ statements).
pub const INVALIDATE_PATH_ID: &str = "delete from ValidPaths where id = ?;";
pub const DELETE_REFERENCES_OF: &str = "delete from Refs where referrer = ?;";
pub const REGISTER_FAILED_PATH: &str = "insert or ignore into FailedPaths (path, time) values (?, ?);";
pub const HAS_PATH_FAILED: &str = "select time from FailedPaths where path = ?;";
pub const QUERY_FAILED_PATHS: &str = "select path from FailedPaths;";
/// `?1` is a path or `*` (everything); a derivation also clears its outputs.
pub const CLEAR_FAILED_PATH: &str = "delete from FailedPaths where ?1 = '*' or path = ?1 \
    or path in (select d.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where v.path = ?1);";
pub const ADD_DERIVATION_OUTPUT: &str = "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?);";
pub const QUERY_VALID_DERIVERS: &str =
    "select v.id, v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?;";
pub const QUERY_DERIVATION_OUTPUTS: &str = "select id, path from DerivationOutputs where drv = ?;";
/// "path >= ? limit 1" rather than "like", to use the index; the caller checks the prefix.
pub const QUERY_PATH_FROM_HASH_PART: &str = "select path from ValidPaths where path >= ? limit 1;";
pub const QUERY_VALID_PATHS: &str = "select path from ValidPaths";
