//! Derivations: the ATerm `.drv` text, modulo hashes and output paths.
//!
//! This module owns
//! - the [`Derivation`] value and its ATerm form `Derive([outputs],[inputDrvs],[inputSrcs],
//!   "system","builder",[args],[env])` ([`Derivation::parse`], [`Derivation::to_aterm`]),
//!   byte-identical to the C++ daemon's `unparseDerivation` and to the Guile client's
//!   `write-derivation`;
//! - `hashDerivationModulo` ([`Derivation::hash_modulo`], [`ModuloHasher`]), the output paths of
//!   a new derivation ([`Derivation::fill_output_paths`]) and the daemon's check of a registered
//!   `.drv` ([`Derivation::check_outputs`], `checkDerivationOutputs`);
//! - the `drvPath!out1,out2` syntax of `BuildPaths` ([`DerivedPath`]).
//!
//! It does no I/O: whoever needs the input derivations of a derivation supplies a loader.
//!
//! # Strings are bytes
//! The C++ daemon treats ATerm strings as bytes, and the real client does produce non-UTF-8
//! `.drv` files: Guix 1.5.0 on Guile 3.0 writes the text through a binary port, so a `é` in an
//! environment variable lands in the file as the single Latin-1 byte `0xE9` (see the `escapes`
//! vector). So the platform, builder, arguments and environment are kept as `Vec<u8>` and round
//! trip byte for byte. Store paths, output names and the hash fields are ASCII by construction
//! and are typed; a `.drv` with other bytes there is refused.
//!
//! # Strictness
//! The parser accepts exactly the canonical form, so `parse` then `to_aterm` reproduces the
//! input byte for byte. Compared with the C++ parser (`parseDerivation`), which is lenient, it
//! additionally refuses, with an error: bytes after the closing `)`, missing or extra commas in
//! lists, duplicate keys or set members, unknown escapes and raw newline/CR/tab bytes (both
//! would print differently), NUL bytes in strings (C++ would silently truncate them
//! when printing), unsorted maps and sets (C++ re-sorts them, so its hashes would no longer be
//! of the file's bytes), invalid store paths and output names, and non-ASCII hash fields. The
//! real client never produces any of these. The grammar is flat (no recursion), so there is no
//! nesting limit to enforce; the caller bounds the input size (see [`MAX_DRV_SIZE`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use thiserror::Error;

use crate::hash::{base16_encode, sha256, Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// A sane upper bound for a `.drv` file, for callers that read one whole (the C++ daemon has
/// none; real derivations are at most a few hundred KiB).
pub const MAX_DRV_SIZE: usize = 64 << 20;

/// The extension of derivation files.
pub const DRV_EXTENSION: &str = ".drv";

/// The builder prefix of builtin builders (`builtin:download`).
pub const BUILTIN_PREFIX: &str = "builtin:";

/// Why a `.drv` text, an output name or a derivation is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DerivationError {
    /// The C++ parser's wording (`expect`).
    #[error("expected string `{expected}' at byte {pos}")]
    Expected { expected: &'static str, pos: usize },
    #[error("unexpected end of derivation")]
    UnexpectedEof,
    #[error("trailing data after derivation at byte {0}")]
    TrailingData(usize),
    #[error("NUL byte in derivation string at byte {0}")]
    NulByte(usize),
    /// A backslash before a byte other than `"`, `\`, `n`, `r`, `t`: C++ reads it as that
    /// byte but would print it unescaped, so the file would not round trip.
    #[error("unexpected escape sequence in derivation string at byte {0}")]
    BadEscape(usize),
    /// A raw newline, carriage return or tab, which the printer always escapes.
    #[error("unescaped control character in derivation string at byte {0}")]
    Unescaped(usize),
    /// The C++ parser's wording (`parsePath`).
    #[error("bad path `{0}' in derivation")]
    BadPath(String),
    #[error("invalid store path `{path}' in derivation: {source}")]
    InvalidStorePath { path: String, source: StorePathError },
    #[error("invalid output name `{0}'")]
    BadOutputName(String),
    #[error("non-ASCII {field} in derivation")]
    NonAscii { field: &'static str },
    #[error("duplicate or unsorted {what} `{key}' in derivation")]
    NotSorted { what: &'static str, key: String },
}

/// The name of a derivation output (`out`, `dev`, …): non-empty, store-name characters only, so
/// that `<name>-<output>` is a valid store path name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutputName(Box<str>);

impl OutputName {
    pub fn new(name: &str) -> Result<OutputName, DerivationError> {
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)) {
            return Err(DerivationError::BadOutputName(name.to_owned()));
        }
        Ok(OutputName(name.into()))
    }

    /// The default output.
    pub fn out() -> OutputName {
        OutputName("out".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OutputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OutputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OutputName({})", self.0)
    }
}

impl std::str::FromStr for OutputName {
    type Err = DerivationError;
    fn from_str(s: &str) -> Result<OutputName, DerivationError> {
        OutputName::new(s)
    }
}

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivationOutput {
    /// The output path; `None` only while output paths are being computed (printed as `""`).
    pub path: Option<StorePath>,
    /// `""`, or the hash algorithm of a fixed output, prefixed with `r:` when the hash is of
    /// the NAR (recursive). Kept verbatim: the modulo hash uses it as written.
    pub hash_algo: String,
    /// `""`, or the expected hash in base16, verbatim.
    pub hash: String,
}

impl DerivationOutput {
    /// An output with neither a path nor a fixed hash.
    pub fn blank() -> DerivationOutput {
        DerivationOutput { path: None, hash_algo: String::new(), hash: String::new() }
    }

    /// `parseHashInfo`: whether the hash is recursive, and the parsed hash. C++ wording on
    /// errors ("unknown hash algorithm", "invalid hash").
    pub fn fixed_hash(&self) -> Result<(bool, Hash), FixedHashError> {
        let (recursive, algo) = match self.hash_algo.strip_prefix("r:") {
            Some(a) => (true, a),
            None => (false, self.hash_algo.as_str()),
        };
        let algo = HashAlgo::from_name(algo).ok_or_else(|| FixedHashError::UnknownAlgo(algo.to_owned()))?;
        // `parseHash` takes base16 only, either case (`isxdigit`).
        let invalid = || FixedHashError::Invalid(self.hash.clone());
        if self.hash.len() != 2 * algo.digest_len() || !self.hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let bytes = crate::hash::base16_decode(&self.hash.to_ascii_lowercase()).ok_or_else(invalid)?;
        let hash = Hash::from_bytes(algo, &bytes).map_err(|_| invalid())?;
        Ok((recursive, hash))
    }
}

/// Why the fixed hash of an output is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FixedHashError {
    #[error("unknown hash algorithm `{0}'")]
    UnknownAlgo(String),
    #[error("invalid hash `{0}'")]
    Invalid(String),
}

/// A derivation. Maps and sets are ordered as the daemon orders them (byte order of the full
/// strings), which is the order of the ATerm text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    pub outputs: BTreeMap<OutputName, DerivationOutput>,
    /// Input derivations and the outputs of each that are needed.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<OutputName>>,
    pub input_srcs: BTreeSet<StorePath>,
    pub platform: Vec<u8>,
    /// A path in the store, or `builtin:<name>`.
    pub builder: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    pub env: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Why a derivation's output paths are not the ones the daemon computes.
#[derive(Debug, Error)]
pub enum CheckOutputsError<E> {
    /// The daemon's wording, verbatim.
    #[error("derivation `{drv}' has incorrect output `{actual}', should be `{expected}'")]
    IncorrectOutput { drv: String, actual: String, expected: String },
    #[error("{0}")]
    FixedHash(#[from] FixedHashError),
    #[error("{0}")]
    StorePath(#[from] StorePathError),
    #[error("{0}")]
    Modulo(#[from] ModuloError<E>),
}

/// Why a modulo hash could not be computed.
#[derive(Debug, Error)]
pub enum ModuloError<E> {
    /// The loader failed for an input derivation.
    #[error("{0}")]
    Load(E),
    /// The input graph has a cycle (impossible for content-addressed `.drv` files, so the loader
    /// is lying).
    #[error("cycle in the input derivations at `{0}'")]
    Cycle(String),
}

impl Derivation {
    /// Parses the ATerm text of a `.drv` file; store paths must lie in `store`.
    pub fn parse(store: &StoreDir, text: &[u8]) -> Result<Derivation, DerivationError> {
        Parser { s: text, pos: 0, store }.derivation()
    }

    /// The ATerm text (`unparseDerivation`).
    pub fn to_aterm(&self, store: &StoreDir) -> Vec<u8> {
        self.write_aterm(store, None)
    }

    /// The ATerm text with each input derivation replaced by the given string (the lowercase
    /// base16 modulo hash), re-sorted: what `hashDerivationModulo` hashes.
    fn write_aterm(
        &self,
        store: &StoreDir,
        masked_inputs: Option<&BTreeMap<String, &BTreeSet<OutputName>>>,
    ) -> Vec<u8> {
        let mut s = Vec::with_capacity(1024);
        s.extend_from_slice(b"Derive([");
        for (i, (name, out)) in self.outputs.iter().enumerate() {
            if i > 0 {
                s.push(b',');
            }
            s.push(b'(');
            print_string(&mut s, name.as_str().as_bytes());
            s.push(b',');
            let path = out.path.as_ref().map(|p| store.display(p)).unwrap_or_default();
            print_string(&mut s, path.as_bytes());
            s.push(b',');
            print_string(&mut s, out.hash_algo.as_bytes());
            s.push(b',');
            print_string(&mut s, out.hash.as_bytes());
            s.push(b')');
        }
        s.extend_from_slice(b"],[");
        let write_input = |s: &mut Vec<u8>, i: usize, key: &str, outs: &BTreeSet<OutputName>| {
            if i > 0 {
                s.push(b',');
            }
            s.push(b'(');
            print_string(s, key.as_bytes());
            s.push(b',');
            print_list(s, outs.iter().map(|o| o.as_str().as_bytes()));
            s.push(b')');
        };
        match masked_inputs {
            Some(m) => m.iter().enumerate().for_each(|(i, (k, o))| write_input(&mut s, i, k, o)),
            None => {
                self.input_drvs.iter().enumerate().for_each(|(i, (p, o))| write_input(&mut s, i, &store.display(p), o))
            }
        }
        s.extend_from_slice(b"],");
        let srcs: Vec<String> = self.input_srcs.iter().map(|p| store.display(p)).collect();
        print_list(&mut s, srcs.iter().map(|p| p.as_bytes()));
        s.push(b',');
        print_string(&mut s, &self.platform);
        s.push(b',');
        print_string(&mut s, &self.builder);
        s.push(b',');
        print_list(&mut s, self.args.iter().map(Vec::as_slice));
        s.extend_from_slice(b",[");
        for (i, (k, v)) in self.env.iter().enumerate() {
            if i > 0 {
                s.push(b',');
            }
            s.push(b'(');
            print_string(&mut s, k);
            s.push(b',');
            print_string(&mut s, v);
            s.push(b')');
        }
        s.extend_from_slice(b"])");
        s
    }

    /// `isFixedOutputDrv`: exactly one output, named `out`, with a non-empty hash.
    pub fn is_fixed_output(&self) -> bool {
        let mut it = self.outputs.iter();
        match (it.next(), it.next()) {
            (Some((name, out)), None) => name.as_str() == "out" && !out.hash.is_empty(),
            _ => false,
        }
    }

    /// Whether the builder is a builtin one (`builtin:…`); such builds run outside the chroot.
    pub fn is_builtin(&self) -> bool {
        self.builder.starts_with(BUILTIN_PREFIX.as_bytes())
    }

    /// The builtin builder's name without the prefix (`download` for `builtin:download`).
    pub fn builtin_name(&self) -> Option<&[u8]> {
        self.builder.strip_prefix(BUILTIN_PREFIX.as_bytes())
    }

    /// An environment variable by name.
    pub fn env_var(&self, name: &str) -> Option<&[u8]> {
        self.env.get(name.as_bytes()).map(Vec::as_slice)
    }

    /// The references of the `.drv` file (what `writeDerivation` passes to AddTextToStore):
    /// the input sources and the input derivations, not the outputs.
    pub fn references(&self) -> BTreeSet<StorePath> {
        self.input_srcs.iter().chain(self.input_drvs.keys()).cloned().collect()
    }

    /// The store path the `.drv` file gets for derivation name `name` (without `.drv`).
    pub fn drv_path(&self, store: &StoreDir, name: &str) -> Result<StorePath, StorePathError> {
        store.make_text_path(&format!("{name}{DRV_EXTENSION}"), &self.to_aterm(store), &self.references())
    }

    /// The output paths, `None` for blank ones.
    pub fn output_paths(&self) -> impl Iterator<Item = (&OutputName, Option<&StorePath>)> {
        self.outputs.iter().map(|(n, o)| (n, o.path.as_ref()))
    }

    /// `hashDerivationModulo` with the modulo hashes of the input derivations supplied by
    /// `input_hash` (one level; see [`ModuloHasher`] for the recursive, memoised form).
    pub fn hash_modulo_with<E>(
        &self,
        store: &StoreDir,
        mut input_hash: impl FnMut(&StorePath) -> Result<[u8; 32], E>,
    ) -> Result<[u8; 32], E> {
        if self.is_fixed_output() {
            if let Some(out) = self.outputs.values().next() {
                let path = out.path.as_ref().map(|p| store.display(p)).unwrap_or_default();
                let s = format!("fixed:out:{}:{}:{}", out.hash_algo, out.hash, path);
                return Ok(sha256(s.as_bytes()));
            }
        }
        let mut masked: BTreeMap<String, &BTreeSet<OutputName>> = BTreeMap::new();
        for (path, outs) in &self.input_drvs {
            let h = input_hash(path)?;
            // Two inputs with the same modulo hash collapse, as in the C++ `std::map`; their
            // output sets are not merged there either (the last one wins).
            masked.insert(base16_encode(&h), outs);
        }
        Ok(sha256(&self.write_aterm(store, Some(&masked))))
    }

    /// `hashDerivationModulo`, loading input derivations through `hasher`.
    pub fn hash_modulo<E, L>(&self, store: &StoreDir, hasher: &mut ModuloHasher<L>) -> Result<[u8; 32], ModuloError<E>>
    where
        L: FnMut(&StorePath) -> Result<Derivation, E>,
    {
        // A fixed-output derivation's hash does not depend on its inputs: don't load them.
        if !self.is_fixed_output() {
            for input in self.input_drvs.keys() {
                hasher.hash_of(store, input)?;
            }
        }
        self.hash_modulo_with(store, |p| hasher.cached(p).ok_or_else(|| ModuloError::Cycle(store.display(p))))
    }

    /// The copy the output paths are computed from: every output path blanked, and every
    /// output's environment variable set to the empty string.
    pub fn blanked(&self) -> Derivation {
        let mut d = self.clone();
        for (name, out) in d.outputs.iter_mut() {
            out.path = None;
            d.env.insert(name.as_str().as_bytes().to_vec(), Vec::new());
        }
        d
    }

    /// The output paths the daemon expects for a derivation named `drv_name` (without `.drv`):
    /// `makeFixedOutputPath` for a fixed-output derivation, otherwise `makeOutputPath` over
    /// the modulo hash of the blanked derivation.
    pub fn expected_output_paths<E, L>(
        &self,
        store: &StoreDir,
        drv_name: &str,
        hasher: &mut ModuloHasher<L>,
    ) -> Result<BTreeMap<OutputName, StorePath>, CheckOutputsError<E>>
    where
        L: FnMut(&StorePath) -> Result<Derivation, E>,
    {
        let mut res = BTreeMap::new();
        if self.is_fixed_output() {
            for (name, out) in &self.outputs {
                let (recursive, hash) = out.fixed_hash()?;
                res.insert(name.clone(), store.make_fixed_output_path(recursive, &hash, drv_name)?);
            }
        } else {
            let h = self.blanked().hash_modulo(store, hasher)?;
            for name in self.outputs.keys() {
                res.insert(name.clone(), store.make_output_path(name.as_str(), &h, drv_name)?);
            }
        }
        Ok(res)
    }

    /// Completes a new derivation as the client does: computes the output paths from the
    /// blanked derivation and stores each in its output and in the environment variable of the
    /// same name.
    pub fn fill_output_paths<E, L>(
        &mut self,
        store: &StoreDir,
        drv_name: &str,
        hasher: &mut ModuloHasher<L>,
    ) -> Result<(), CheckOutputsError<E>>
    where
        L: FnMut(&StorePath) -> Result<Derivation, E>,
    {
        let paths = self.expected_output_paths(store, drv_name, hasher)?;
        for (name, path) in paths {
            self.env.insert(name.as_str().as_bytes().to_vec(), store.display(&path).into_bytes());
            if let Some(out) = self.outputs.get_mut(&name) {
                out.path = Some(path);
            }
        }
        Ok(())
    }

    /// `checkDerivationOutputs`: the daemon's check when `drv_path` is registered. Every output
    /// path and the environment variable of the same name must be the expected path.
    pub fn check_outputs<E, L>(
        &self,
        store: &StoreDir,
        drv_path: &StorePath,
        hasher: &mut ModuloHasher<L>,
    ) -> Result<(), CheckOutputsError<E>>
    where
        L: FnMut(&StorePath) -> Result<Derivation, E>,
    {
        let drv_name = drv_name(drv_path).unwrap_or(drv_path.name());
        let expected = self.expected_output_paths(store, drv_name, hasher)?;
        for (name, path) in expected {
            let expected = store.display(&path);
            let out = self.outputs.get(&name);
            let actual = out.and_then(|o| o.path.as_ref()).map(|p| store.display(p)).unwrap_or_default();
            if actual != expected || self.env_var(name.as_str()) != Some(expected.as_bytes()) {
                return Err(CheckOutputsError::IncorrectOutput { drv: store.display(drv_path), actual, expected });
            }
        }
        Ok(())
    }
}

/// The derivation name of a `.drv` store path: its name without `.drv`.
pub fn drv_name(drv_path: &StorePath) -> Option<&str> {
    drv_path.name().strip_suffix(DRV_EXTENSION)
}

/// Recursive, memoised `hashDerivationModulo` (the C++ `drvHashes` cache). The loader returns
/// the parsed derivation of an input `.drv`; it is called at most once per path. The recursion
/// is an explicit stack, so deep chains cannot overflow the thread's stack.
pub struct ModuloHasher<L> {
    load: L,
    cache: HashMap<StorePath, [u8; 32]>,
}

impl<L> ModuloHasher<L> {
    pub fn new(load: L) -> ModuloHasher<L> {
        ModuloHasher { load, cache: HashMap::new() }
    }

    /// A memoised modulo hash, if known.
    pub fn cached(&self, path: &StorePath) -> Option<[u8; 32]> {
        self.cache.get(path).copied()
    }

    /// Records a known modulo hash (e.g. of a derivation just registered).
    pub fn insert(&mut self, path: StorePath, hash: [u8; 32]) {
        self.cache.insert(path, hash);
    }

    /// The modulo hash of the derivation at `path`, loading it and its inputs as needed.
    pub fn hash_of<E>(&mut self, store: &StoreDir, path: &StorePath) -> Result<[u8; 32], ModuloError<E>>
    where
        L: FnMut(&StorePath) -> Result<Derivation, E>,
    {
        if let Some(h) = self.cached(path) {
            return Ok(h);
        }
        // Each frame: a derivation whose inputs are being hashed.
        let mut stack: Vec<(StorePath, Derivation)> = Vec::new();
        let mut on_stack: BTreeSet<StorePath> = BTreeSet::new();
        let first = (self.load)(path).map_err(ModuloError::Load)?;
        on_stack.insert(path.clone());
        stack.push((path.clone(), first));
        while let Some((p, drv)) = stack.last() {
            let missing = if drv.is_fixed_output() {
                None
            } else {
                drv.input_drvs.keys().find(|i| !self.cache.contains_key(*i)).cloned()
            };
            match missing {
                Some(input) => {
                    if on_stack.contains(&input) {
                        return Err(ModuloError::Cycle(store.display(&input)));
                    }
                    let d = (self.load)(&input).map_err(ModuloError::Load)?;
                    on_stack.insert(input.clone());
                    stack.push((input, d));
                }
                None => {
                    let h = drv.hash_modulo_with(store, |i| {
                        self.cache.get(i).copied().ok_or_else(|| ModuloError::Cycle(store.display(i)))
                    })?;
                    let p = p.clone();
                    stack.pop();
                    on_stack.remove(&p);
                    self.cache.insert(p, h);
                }
            }
        }
        self.cached(path).ok_or_else(|| ModuloError::Cycle(store.display(path)))
    }
}

/// A `BuildPaths` element: a store path, and for a derivation optionally the wanted outputs
/// (`drvPath!out1,out2`; none means all).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DerivedPath {
    pub path: StorePath,
    pub outputs: BTreeSet<OutputName>,
}

impl DerivedPath {
    /// `parseDrvPathWithOutputs`: split at the first `!`, outputs comma-separated (empty items
    /// skipped, as `tokenizeString` does).
    pub fn parse(store: &StoreDir, s: &str) -> Result<DerivedPath, DerivationError> {
        let (p, outs) = match s.split_once('!') {
            Some((p, o)) => (p, Some(o)),
            None => (s, None),
        };
        let path = store.parse(p).map_err(|source| DerivationError::InvalidStorePath { path: p.to_owned(), source })?;
        let outputs = outs
            .into_iter()
            .flat_map(|o| o.split(','))
            .filter(|o| !o.is_empty())
            .map(OutputName::new)
            .collect::<Result<_, _>>()?;
        Ok(DerivedPath { path, outputs })
    }

    /// `makeDrvPathWithOutputs`.
    pub fn display(&self, store: &StoreDir) -> String {
        let mut s = store.display(&self.path);
        for (i, o) in self.outputs.iter().enumerate() {
            s.push(if i == 0 { '!' } else { ',' });
            s.push_str(o.as_str());
        }
        s
    }

    /// `wantOutput`: whether `output` is wanted (all are when none is named).
    pub fn wants(&self, output: &OutputName) -> bool {
        self.outputs.is_empty() || self.outputs.contains(output)
    }
}

fn print_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &c in s {
        match c {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(c);
            }
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(c),
        }
    }
    out.push(b'"');
}

fn print_list<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a [u8]>) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        print_string(out, item);
    }
    out.push(b']');
}

/// A cursor over the `.drv` text.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    store: &'a StoreDir,
}

impl Parser<'_> {
    fn expect(&mut self, lit: &'static str) -> Result<(), DerivationError> {
        let end = self.pos.saturating_add(lit.len());
        match self.s.get(self.pos..end) {
            Some(b) if b == lit.as_bytes() => {
                self.pos = end;
                Ok(())
            }
            _ => Err(DerivationError::Expected { expected: lit, pos: self.pos }),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Before a list element: `]` ends the list (consumed, `true`); otherwise, after the first
    /// element, a `,` is required.
    fn end_of_list(&mut self, first: bool) -> Result<bool, DerivationError> {
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                Ok(true)
            }
            None => Err(DerivationError::UnexpectedEof),
            Some(_) if first => Ok(false),
            Some(_) => self.expect(",").map(|()| false),
        }
    }

    /// A quoted string with the C++ escapes: `\n`, `\r`, `\t`, and `\x` for any other x.
    fn string(&mut self) -> Result<Vec<u8>, DerivationError> {
        self.expect("\"")?;
        let mut res = Vec::new();
        loop {
            let c = self.peek().ok_or(DerivationError::UnexpectedEof)?;
            self.pos += 1;
            let c = match c {
                b'"' => return Ok(res),
                b'\\' => {
                    let e = self.peek().ok_or(DerivationError::UnexpectedEof)?;
                    self.pos += 1;
                    match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'"' | b'\\' => e,
                        // C++ takes any other escaped byte literally, but then prints it
                        // unescaped: refuse, to keep round trips exact.
                        _ => return Err(DerivationError::BadEscape(self.pos - 2)),
                    }
                }
                b'\n' | b'\r' | b'\t' => return Err(DerivationError::Unescaped(self.pos - 1)),
                _ => c,
            };
            if c == 0 {
                return Err(DerivationError::NulByte(self.pos - 1));
            }
            res.push(c);
        }
    }

    fn ascii(&mut self, field: &'static str) -> Result<String, DerivationError> {
        let b = self.string()?;
        if !b.is_ascii() {
            return Err(DerivationError::NonAscii { field });
        }
        String::from_utf8(b).map_err(|_| DerivationError::NonAscii { field })
    }

    fn path(&mut self) -> Result<StorePath, DerivationError> {
        let b = self.string()?;
        let s = String::from_utf8(b)
            .map_err(|e| DerivationError::BadPath(String::from_utf8_lossy(e.as_bytes()).into_owned()))?;
        if !s.starts_with('/') {
            return Err(DerivationError::BadPath(s));
        }
        self.store.parse(&s).map_err(|source| DerivationError::InvalidStorePath { path: s, source })
    }

    fn output_name(&mut self) -> Result<OutputName, DerivationError> {
        let b = self.string()?;
        let s = String::from_utf8(b)
            .map_err(|e| DerivationError::BadOutputName(String::from_utf8_lossy(e.as_bytes()).into_owned()))?;
        OutputName::new(&s)
    }

    fn derivation(mut self) -> Result<Derivation, DerivationError> {
        self.expect("Derive([")?;

        let mut outputs = BTreeMap::new();
        let mut first = true;
        while !self.end_of_list(first)? {
            first = false;
            self.expect("(")?;
            let id = self.output_name()?;
            self.expect(",")?;
            let path = self.path()?;
            self.expect(",")?;
            let hash_algo = self.ascii("hash algorithm")?;
            self.expect(",")?;
            let hash = self.ascii("hash")?;
            self.expect(")")?;
            insert_sorted(&mut outputs, id, DerivationOutput { path: Some(path), hash_algo, hash }, "output", |k| {
                k.to_string()
            })?;
        }

        self.expect(",[")?;
        let mut input_drvs = BTreeMap::new();
        let mut first = true;
        while !self.end_of_list(first)? {
            first = false;
            self.expect("(")?;
            let path = self.path()?;
            self.expect(",[")?;
            let mut outs = BTreeSet::new();
            let mut first_out = true;
            while !self.end_of_list(first_out)? {
                first_out = false;
                let o = self.output_name()?;
                insert_set_sorted(&mut outs, o, "input derivation output", |k| k.to_string())?;
            }
            self.expect(")")?;
            let store = self.store;
            insert_sorted(&mut input_drvs, path, outs, "input derivation", |k| store.display(k))?;
        }

        self.expect(",[")?;
        let mut input_srcs = BTreeSet::new();
        let mut first = true;
        while !self.end_of_list(first)? {
            first = false;
            let p = self.path()?;
            let store = self.store;
            insert_set_sorted(&mut input_srcs, p, "input source", |k| store.display(k))?;
        }

        self.expect(",")?;
        let platform = self.string()?;
        self.expect(",")?;
        let builder = self.string()?;

        self.expect(",[")?;
        let mut args = Vec::new();
        let mut first = true;
        while !self.end_of_list(first)? {
            first = false;
            args.push(self.string()?);
        }

        self.expect(",[")?;
        let mut env = BTreeMap::new();
        let mut first = true;
        while !self.end_of_list(first)? {
            first = false;
            self.expect("(")?;
            let name = self.string()?;
            self.expect(",")?;
            let value = self.string()?;
            self.expect(")")?;
            insert_sorted(&mut env, name, value, "environment variable", |k| String::from_utf8_lossy(k).into_owned())?;
        }
        self.expect(")")?;
        if self.pos != self.s.len() {
            return Err(DerivationError::TrailingData(self.pos));
        }
        Ok(Derivation { outputs, input_drvs, input_srcs, platform, builder, args, env })
    }
}

/// Inserts a key that must sort strictly after every key already present. Byte order of the
/// printed key equals the `Ord` of every key type used here.
fn insert_sorted<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    what: &'static str,
    show: impl Fn(&K) -> String,
) -> Result<(), DerivationError> {
    if map.last_key_value().is_some_and(|(last, _)| *last >= key) {
        return Err(DerivationError::NotSorted { what, key: show(&key) });
    }
    map.insert(key, value);
    Ok(())
}

fn insert_set_sorted<K: Ord>(
    set: &mut BTreeSet<K>,
    key: K,
    what: &'static str,
    show: impl Fn(&K) -> String,
) -> Result<(), DerivationError> {
    if set.last().is_some_and(|last| *last >= key) {
        return Err(DerivationError::NotSorted { what, key: show(&key) });
    }
    set.insert(key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::HashPart;
    use proptest::prelude::*;

    fn store() -> StoreDir {
        StoreDir::default()
    }

    fn sp(name: &str, seed: u8) -> StorePath {
        StorePath::from_parts(HashPart::from_digest(&[seed; 20]), name).unwrap()
    }

    fn sample() -> Derivation {
        let mut d = Derivation {
            outputs: BTreeMap::new(),
            input_drvs: BTreeMap::new(),
            input_srcs: [sp("src", 1)].into_iter().collect(),
            platform: b"x86_64-linux".to_vec(),
            builder: b"/bin/sh".to_vec(),
            args: vec![b"-c".to_vec(), b"echo \"hi\"\n".to_vec()],
            env: BTreeMap::new(),
        };
        d.outputs.insert(OutputName::out(), DerivationOutput { path: Some(sp("x", 2)), ..DerivationOutput::blank() });
        d.input_drvs.insert(sp("in.drv", 3), [OutputName::out()].into_iter().collect());
        d.env.insert(b"out".to_vec(), b"/gnu/store/x".to_vec());
        d
    }

    #[test]
    fn known_text() {
        let t = sample().to_aterm(&store());
        let s = String::from_utf8(t.clone()).unwrap();
        assert!(s.starts_with("Derive([(\"out\",\"/gnu/store/"));
        assert!(s.contains(r#"["-c","echo \"hi\"\n"]"#), "{s}");
        assert_eq!(Derivation::parse(&store(), &t).unwrap(), sample());
    }

    #[test]
    fn refuses_non_canonical_and_garbage() {
        let good = sample().to_aterm(&store());
        let s = String::from_utf8(good.clone()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            ([&good[..], b"\n"].concat(), "trailing"),
            (good[..good.len() - 1].to_vec(), "truncated"),
            (s.replacen("Derive", "derive", 1).into_bytes(), "keyword"),
            (s.replacen(r#"["-c","#, r#"["-c""#, 1).into_bytes(), "missing comma"),
            (s.replacen(r#"["-c","#, r#"[,"-c","#, 1).into_bytes(), "leading comma"),
            (s.replacen("echo", "ec\\ho", 1).into_bytes(), "bad escape"),
            (s.replacen("echo", "ec\0ho", 1).into_bytes(), "nul"),
            (s.replacen(r#"[("out","/gnu"#, r#"[("out","gnu"#, 1).into_bytes(), "relative path"),
            (s.replacen(r#"[("out","#, r#"[("o t","#, 1).into_bytes(), "output name"),
            (s.replacen(r#"[("out","#, r#"[("","#, 1).into_bytes(), "empty output name"),
        ];
        for (bad, what) in cases {
            assert!(Derivation::parse(&store(), &bad).is_err(), "{what} accepted");
        }
        let mut d = sample();
        d.env.insert(b"a".to_vec(), b"1".to_vec());
        let s = String::from_utf8(d.to_aterm(&store())).unwrap();
        let swapped = s.replacen(r#"("a","1"),("out","/gnu/store/x")"#, r#"("out","/gnu/store/x"),("a","1")"#, 1);
        assert_ne!(swapped, s);
        assert!(matches!(
            Derivation::parse(&store(), swapped.as_bytes()),
            Err(DerivationError::NotSorted { what: "environment variable", .. })
        ));
        let dup = s.replacen(r#"("a","1")"#, r#"("a","1"),("a","1")"#, 1);
        assert!(matches!(Derivation::parse(&store(), dup.as_bytes()), Err(DerivationError::NotSorted { .. })));
        // The C++ error wording for a bad path.
        assert_eq!(DerivationError::BadPath("x".into()).to_string(), "bad path `x' in derivation");
    }

    #[test]
    fn empty_lists_and_no_outputs() {
        let t = br#"Derive([],[],[],"","",[],[])"#;
        let d = Derivation::parse(&store(), t).unwrap();
        assert_eq!(d.to_aterm(&store()), t.to_vec());
        assert!(!d.is_fixed_output());
    }

    #[test]
    fn fixed_hash_parsing() {
        let mut o = DerivationOutput::blank();
        o.hash_algo = "r:sha1".into();
        o.hash = "F572D396FAE9206628714FB2CE00F72E94F2258F".into();
        let (rec, h) = o.fixed_hash().unwrap();
        assert!(rec);
        assert_eq!(h.to_base16(), "f572d396fae9206628714fb2ce00f72e94f2258f");
        o.hash_algo = "sha42".into();
        assert_eq!(o.fixed_hash().unwrap_err().to_string(), "unknown hash algorithm `sha42'");
        o.hash_algo = "sha1".into();
        o.hash = "zz".into();
        assert_eq!(o.fixed_hash().unwrap_err().to_string(), "invalid hash `zz'");
    }

    #[test]
    fn derived_paths() {
        let st = store();
        let p = st.display(&sp("a.drv", 4));
        let d = DerivedPath::parse(&st, &p).unwrap();
        assert!(d.outputs.is_empty() && d.wants(&OutputName::out()));
        assert_eq!(d.display(&st), p);
        let d = DerivedPath::parse(&st, &format!("{p}!out,,dev")).unwrap();
        assert_eq!(d.display(&st), format!("{p}!dev,out"));
        assert!(!d.wants(&OutputName::new("doc").unwrap()));
        assert!(DerivedPath::parse(&st, &format!("{p}!")).unwrap().outputs.is_empty());
        assert!(DerivedPath::parse(&st, &format!("{p}!a b")).is_err());
        assert!(DerivedPath::parse(&st, "/tmp/x!out").is_err());
    }

    #[test]
    fn cycle_from_a_lying_loader_is_an_error() {
        let st = store();
        let a = sp("a.drv", 5);
        let b = sp("b.drv", 6);
        let mk = |input: &StorePath| {
            let mut d = sample();
            d.input_drvs.clear();
            d.input_drvs.insert(input.clone(), [OutputName::out()].into_iter().collect());
            d
        };
        let (da, db) = (mk(&b), mk(&a));
        let mut h = ModuloHasher::new(|p: &StorePath| -> Result<Derivation, ()> {
            Ok(if p == &a { da.clone() } else { db.clone() })
        });
        assert!(matches!(h.hash_of(&st, &a), Err(ModuloError::Cycle(_))));
    }

    #[test]
    fn deep_chain_does_not_overflow() {
        // A chain far deeper than real ones (a few hundred) is hashed with an explicit stack.
        let st = store();
        let path = |i: u32| {
            let mut d = [0u8; 20];
            d[..4].copy_from_slice(&i.to_le_bytes());
            StorePath::from_parts(HashPart::from_digest(&d), "c.drv").unwrap()
        };
        let paths: Vec<StorePath> = (0..3000).map(path).collect();
        let index: HashMap<&StorePath, usize> = paths.iter().enumerate().map(|(i, p)| (p, i)).collect();
        let mut loads = 0usize;
        let mut h = ModuloHasher::new(|p: &StorePath| -> Result<Derivation, ()> {
            loads += 1;
            let i = *index.get(p).ok_or(())?;
            let mut d = sample();
            d.input_drvs.clear();
            if let Some(next) = paths.get(i + 1) {
                d.input_drvs.insert(next.clone(), [OutputName::out()].into_iter().collect());
            }
            Ok(d)
        });
        let top = h.hash_of(&st, &paths[0]).unwrap();
        assert_eq!(h.hash_of(&st, &paths[0]).unwrap(), top);
        drop(h);
        assert_eq!(loads, paths.len(), "each input loaded once");
    }

    fn bytes_no_nul() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..24)
    }

    fn store_path() -> impl Strategy<Value = StorePath> {
        (proptest::array::uniform20(any::<u8>()), "[a-z0-9][a-z0-9+._-]{0,12}")
            .prop_map(|(d, n)| StorePath::from_parts(HashPart::from_digest(&d), &n).unwrap())
    }

    fn output_name() -> impl Strategy<Value = OutputName> {
        "[a-zA-Z0-9+._?=-]{1,8}".prop_map(|s| OutputName::new(&s).unwrap())
    }

    prop_compose! {
        fn derivation()(
            outputs in proptest::collection::btree_map(output_name(), (store_path(), "(r:)?[a-z0-9]{0,6}", "[0-9a-f]{0,8}"), 0..4),
            input_drvs in proptest::collection::btree_map(store_path(), proptest::collection::btree_set(output_name(), 0..3), 0..4),
            input_srcs in proptest::collection::btree_set(store_path(), 0..4),
            platform in bytes_no_nul(),
            builder in bytes_no_nul(),
            args in proptest::collection::vec(bytes_no_nul(), 0..4),
            env in proptest::collection::btree_map(bytes_no_nul(), bytes_no_nul(), 0..6),
        ) -> Derivation {
            let outputs = outputs
                .into_iter()
                .map(|(n, (p, a, h))| (n, DerivationOutput { path: Some(p), hash_algo: a, hash: h }))
                .collect();
            Derivation { outputs, input_drvs, input_srcs, platform, builder, args, env }
        }
    }

    proptest! {
        #[test]
        fn print_parse_round_trip(d in derivation()) {
            let t = d.to_aterm(&store());
            let back = Derivation::parse(&store(), &t).unwrap();
            prop_assert_eq!(&back, &d);
            prop_assert_eq!(back.to_aterm(&store()), t);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Derivation::parse(&store(), &b);
            let mut with_prefix = b"Derive([".to_vec();
            with_prefix.extend_from_slice(&b);
            let _ = Derivation::parse(&store(), &with_prefix);
        }

        #[test]
        fn mutated_derivations_never_panic(d in derivation(), pos in any::<usize>(), byte in any::<u8>(), cut in any::<bool>()) {
            let mut t = d.to_aterm(&store());
            let i = pos % t.len();
            if cut { t.truncate(i) } else { t[i] = byte }
            if let Ok(p) = Derivation::parse(&store(), &t) {
                // Whatever is accepted is canonical.
                prop_assert_eq!(p.to_aterm(&store()), t);
            }
        }

        #[test]
        fn derived_path_never_panics(s in "\\PC{0,80}") {
            let _ = DerivedPath::parse(&store(), &s);
        }
    }
}
