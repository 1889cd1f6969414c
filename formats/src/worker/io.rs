//! Bounded typed reading and buffered encoding shared by requests, replies and the handshake.

use std::collections::BTreeSet;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::budget::{Budget, STRING_OVERHEAD};
use super::{Limits, Opcode, ProtoError};
use crate::store_path::{HashPart, StoreDir, StorePath};
use crate::wire::{self, async_read_int, async_read_padding, async_read_u64};

/// The most a string read allocates before its bytes arrive.
const READ_CHUNK: usize = 64 * 1024;

/// Reads typed fields, bounding every allocation by [`Limits`].
///
/// A store path that passes the daemon's `isStorePath` test but does not parse as a
/// [`StorePath`] is remembered as a "soft" error and replaced by a placeholder so the rest of the
/// request is still consumed; [`Reader::finish`] turns it into [`ProtoError::MalformedPath`].
///
/// A reader made with [`Reader::for_request`] also counts what it decoded ([`super::budget`]).
pub(crate) struct Reader<'a, R: ?Sized> {
    pub r: &'a mut R,
    pub store: &'a StoreDir,
    pub limits: &'a Limits,
    soft: Option<String>,
    /// Bytes decoded so far, as [`super::budget`] counts them, and their bound.
    used: u64,
    max_total: u64,
    budget: Option<&'a mut dyn Budget>,
}

impl<'a, R: AsyncRead + Unpin + ?Sized> Reader<'a, R> {
    /// A reader of replies and frames: each string and list bounded, not their sum.
    pub fn new(r: &'a mut R, store: &'a StoreDir, limits: &'a Limits) -> Self {
        Reader { r, store, limits, soft: None, used: 0, max_total: u64::MAX, budget: None }
    }

    /// A reader of one request: the sum of what it decodes is bounded by
    /// [`Limits::max_request_bytes`] and drawn from `budget`.
    pub fn for_request(r: &'a mut R, store: &'a StoreDir, limits: &'a Limits, budget: &'a mut dyn Budget) -> Self {
        Reader { r, store, limits, soft: None, used: 0, max_total: limits.max_request_bytes, budget: Some(budget) }
    }

    /// Counts `n` more bytes before they are allocated.
    async fn charge(&mut self, n: u64) -> Result<(), ProtoError> {
        let total = self.used.saturating_add(n);
        if total > self.max_total {
            return Err(ProtoError::RequestTooLarge { max: self.max_total });
        }
        self.used = total;
        if let Some(wait) = self.budget.as_mut().and_then(|b| b.admit(total)) {
            wait.await?;
        }
        Ok(())
    }

    pub async fn int(&mut self) -> Result<u32, ProtoError> {
        Ok(async_read_int(self.r).await?)
    }

    pub async fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(async_read_u64(self.r).await?)
    }

    /// `readInt() != 0`.
    pub async fn bool(&mut self) -> Result<bool, ProtoError> {
        Ok(self.int().await? != 0)
    }

    /// `readInt() == 1` (AddToStore `fixed`/`recursive`, ExportPath `sign`).
    pub async fn bool_eq1(&mut self) -> Result<bool, ProtoError> {
        Ok(self.int().await? == 1)
    }

    /// A byte string of at most `max` bytes. The length is an int, so a length word with a
    /// non-zero high half is the daemon's "> 32-bit integers" error.
    pub async fn bytes(&mut self, what: &'static str, max: u64) -> Result<Vec<u8>, ProtoError> {
        let len = u64::from(self.int().await?);
        if len > max {
            return Err(ProtoError::StringTooLong { what, len, max });
        }
        self.charge(len + STRING_OVERHEAD).await?;
        // Grown as the bytes arrive, so a short request announcing a long string allocates
        // only what it really sends.
        let mut v = Vec::with_capacity((len as usize).min(READ_CHUNK));
        let got =
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::AsyncReadExt::take(&mut *self.r, len), &mut v).await?;
        if got as u64 != len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        async_read_padding(self.r, len).await?;
        Ok(v)
    }

    /// A string; bytes that are not UTF-8 are replaced (the peers only ever send UTF-8).
    pub async fn string(&mut self, what: &'static str, max: u64) -> Result<String, ProtoError> {
        Ok(into_string(self.bytes(what, max).await?))
    }

    pub async fn short_string(&mut self, what: &'static str) -> Result<String, ProtoError> {
        let max = self.limits.max_path_len;
        self.string(what, max).await
    }

    pub async fn long_string(&mut self, what: &'static str) -> Result<String, ProtoError> {
        let max = self.limits.max_string_len;
        self.string(what, max).await
    }

    /// A list length, checked against `max`.
    pub async fn count(&mut self, what: &'static str, max: u64) -> Result<u64, ProtoError> {
        let len = u64::from(self.int().await?);
        if len > max {
            return Err(ProtoError::ListTooLong { what, len, max });
        }
        Ok(len)
    }

    pub async fn list_count(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        let max = self.limits.max_list_len;
        self.count(what, max).await
    }

    /// A string list of path-sized strings.
    pub async fn strings(&mut self, what: &'static str) -> Result<Vec<String>, ProtoError> {
        let n = self.list_count(what).await?;
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(self.short_string(what).await?);
        }
        Ok(v)
    }

    /// `readString` + `assertStorePath`: the raw string, checked to be directly in the store.
    pub async fn store_path_string(&mut self) -> Result<String, ProtoError> {
        let s = self.short_string("store path").await?;
        if !self.store.is_in_store_syntax(&s) {
            return Err(ProtoError::NotInStore(s));
        }
        Ok(s)
    }

    /// `readStorePath`, typed.
    pub async fn store_path(&mut self) -> Result<StorePath, ProtoError> {
        let s = self.store_path_string().await?;
        self.typed_path(s)
    }

    pub fn typed_path(&mut self, s: String) -> Result<StorePath, ProtoError> {
        match self.store.parse(&s) {
            Ok(p) => Ok(p),
            Err(_) => {
                if self.soft.is_none() {
                    self.soft = Some(s);
                }
                placeholder()
            }
        }
    }

    /// `readStorePaths<PathSet>`, typed (sorted, deduplicated).
    pub async fn store_path_set(&mut self) -> Result<BTreeSet<StorePath>, ProtoError> {
        let n = self.list_count("store path list").await?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            set.insert(self.store_path().await?);
        }
        Ok(set)
    }

    /// A store path sent by the daemon in a reply: must parse.
    pub async fn reply_path(&mut self) -> Result<StorePath, ProtoError> {
        let s = self.short_string("store path").await?;
        Ok(self.store.parse(&s)?)
    }

    /// A store path or "" (none).
    pub async fn reply_opt_path(&mut self) -> Result<Option<StorePath>, ProtoError> {
        let s = self.short_string("store path").await?;
        if s.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.store.parse(&s)?))
    }

    pub async fn reply_path_set(&mut self) -> Result<BTreeSet<StorePath>, ProtoError> {
        let n = self.list_count("store path list").await?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            set.insert(self.reply_path().await?);
        }
        Ok(set)
    }

    /// Ends a request: a remembered malformed path becomes the error.
    pub fn finish<T>(self, op: Opcode, value: T) -> Result<T, ProtoError> {
        match self.soft {
            Some(path) => Err(ProtoError::MalformedPath { op, path }),
            None => Ok(value),
        }
    }
}

fn placeholder() -> Result<StorePath, ProtoError> {
    Ok(StorePath::from_parts(HashPart::from_digest(&[0u8; 20]), "invalid")?)
}

pub(crate) fn into_string(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Encodes into a buffer that is written in one go.
#[derive(Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn int(&mut self, v: u32) {
        wire::put_u64(&mut self.buf, u64::from(v));
    }

    pub fn u64(&mut self, v: u64) {
        wire::put_u64(&mut self.buf, v);
    }

    pub fn bool(&mut self, v: bool) {
        self.int(u32::from(v));
    }

    pub fn bytes(&mut self, s: &[u8]) {
        wire::put_bytes(&mut self.buf, s);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn path(&mut self, store: &StoreDir, p: &StorePath) {
        self.str(&store.display(p));
    }

    pub fn opt_path(&mut self, store: &StoreDir, p: Option<&StorePath>) {
        match p {
            Some(p) => self.path(store, p),
            None => self.str(""),
        }
    }

    pub fn len(&mut self, n: usize) {
        wire::put_u64(&mut self.buf, n as u64);
    }

    pub fn paths<'p>(&mut self, store: &StoreDir, ps: impl ExactSizeIterator<Item = &'p StorePath>) {
        self.len(ps.len());
        for p in ps {
            self.path(store, p);
        }
    }

    pub fn strs<'s>(&mut self, ss: impl ExactSizeIterator<Item = &'s String>) {
        self.len(ss.len());
        for s in ss {
            self.str(s);
        }
    }

    pub async fn send<W: AsyncWrite + Unpin + ?Sized>(self, w: &mut W) -> Result<(), ProtoError> {
        w.write_all(&self.buf).await?;
        w.flush().await?;
        Ok(())
    }
}
