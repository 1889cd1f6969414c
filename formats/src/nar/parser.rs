//! The sans-IO NAR parser: the single place that decides what a valid NAR is.
//!
//! The parser never touches a stream. Its driver asks [`Parser::step`] what to read next,
//! reads exactly that, and hands it back; the parser answers with the structural [`Event`]s
//! the bytes mean, or with the error that makes the archive invalid. The readers in `read.rs`
//! are such drivers, so they all accept exactly the same language. The parser also counts the NAR's bytes, so it can refuse an announced size
//! that would exceed [`Limits::max_nar_size`] before anything is read or allocated.

use super::{Limits, NarError, NAR_MAGIC};
use crate::wire::padding;

/// Longest tag token we read ("nix-archive-1" is 13 bytes; other tags are shorter).
const MAX_TAG_LEN: u64 = 16;

/// What the driver must read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A string token: read its u64 length and pass it to [`Parser::token_len`]; if accepted,
    /// read that many bytes plus padding (checking it is zero) and pass the bytes to
    /// [`Parser::token`].
    Token,
    /// The u64 size of a regular file's contents: pass it to [`Parser::contents_size`].
    Size,
    /// `len` bytes of file contents followed by padding to 8 (checked zero); then call
    /// [`Parser::contents_done`].
    Contents { len: u64 },
    /// The NAR is complete; the driver must not read further.
    Done,
}

/// The structure a NAR describes, in order. Paths are implied: [`Event::Entry`] descends into
/// a named child of the current directory, [`Event::EntryEnd`] climbs back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The current node is a directory; its entries follow.
    Directory,
    /// The current directory has no more entries.
    DirectoryEnd,
    /// The next node is the child `name` of the current directory. `name` is a valid file
    /// name, strictly greater than its predecessor.
    Entry { name: &'a [u8] },
    /// The child node is complete.
    EntryEnd,
    /// The current node is a regular file of `size` bytes; [`Step::Contents`] follows.
    Regular { executable: bool, size: u64 },
    /// The current node is a symlink.
    Symlink { target: &'a [u8] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Magic,
    NodeOpen,
    TypeTag,
    TypeValue,
    /// After "type" "regular": "executable" or "contents".
    RegularBody,
    ExecutableEmpty,
    ContentsTag,
    Size {
        executable: bool,
    },
    Contents {
        len: u64,
    },
    TargetTag,
    Target,
    /// The ")" closing a regular file or symlink node.
    NodeClose,
    /// Inside a directory node: "entry" or ")".
    DirBody,
    EntryOpen,
    NameTag,
    Name,
    NodeTag,
    EntryClose,
    Done,
}

/// One open directory: the last entry name seen, for the ordering check.
#[derive(Debug, Default)]
struct Frame {
    prev: Option<Vec<u8>>,
}

/// The NAR state machine. See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    state: State,
    dirs: Vec<Frame>,
    /// Length accepted by `token_len`, awaiting `token`.
    pending: Option<u64>,
    offset: u64,
}

const KNOWN_TAGS: [&[u8]; 12] = [
    b"(",
    b")",
    b"type",
    b"regular",
    b"directory",
    b"symlink",
    b"executable",
    b"contents",
    b"target",
    b"entry",
    b"name",
    b"node",
];

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The error for a token other than the one the grammar requires.
fn unexpected(expected: &'static str, got: &[u8]) -> NarError {
    if KNOWN_TAGS.contains(&got) {
        NarError::Unexpected { expected, got: lossy(got) }
    } else {
        NarError::UnknownField(lossy(got))
    }
}

/// Whether `name` may be a directory entry.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    !(name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0))
}

impl Parser {
    pub fn new(limits: Limits) -> Parser {
        Parser { limits, state: State::Magic, dirs: Vec::new(), pending: None, offset: 0 }
    }

    /// What to read next.
    pub fn step(&self) -> Step {
        match self.state {
            State::Size { .. } => Step::Size,
            State::Contents { len } => Step::Contents { len },
            State::Done => Step::Done,
            _ => Step::Token,
        }
    }

    /// Bytes of the NAR accounted for so far; the NAR size once [`Step::Done`].
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of directories enclosing the current node.
    pub fn depth(&self) -> usize {
        self.dirs.len()
    }

    fn account(&mut self, n: u64) -> Result<(), NarError> {
        let next = self.offset.checked_add(n);
        match (next, self.limits.max_nar_size) {
            (Some(next), Some(max)) if next > max => Err(NarError::TooLarge { max }),
            (Some(next), _) => {
                self.offset = next;
                Ok(())
            }
            (None, max) => Err(NarError::TooLarge { max: max.unwrap_or(u64::MAX) }),
        }
    }

    /// Accepts the length word of the next token, checking it against what may come here.
    pub fn token_len(&mut self, len: u64) -> Result<(), NarError> {
        if self.step() != Step::Token || self.pending.is_some() {
            return Err(NarError::Misuse("token length not expected"));
        }
        match self.state {
            State::Magic if len != NAR_MAGIC.len() as u64 => return Err(NarError::BadMagic),
            State::Name if len > self.limits.max_name_len => {
                return Err(NarError::NameTooLong { len, max: self.limits.max_name_len })
            }
            State::Target if len > self.limits.max_target_len => {
                return Err(NarError::TargetTooLong { len, max: self.limits.max_target_len })
            }
            State::ExecutableEmpty if len != 0 => return Err(NarError::ExecutableNotEmpty),
            State::Name | State::Target => {}
            _ if len > MAX_TAG_LEN => return Err(NarError::TagTooLong { len }),
            _ => {}
        }
        // `len` is now at most a few KiB, so the arithmetic cannot overflow.
        self.account(8 + len + padding(len) as u64)?;
        self.pending = Some(len);
        Ok(())
    }

    /// Accepts the payload of the token whose length was accepted by [`Parser::token_len`].
    pub fn token<'a>(&mut self, tok: &'a [u8]) -> Result<Option<Event<'a>>, NarError> {
        if self.pending.take() != Some(tok.len() as u64) {
            return Err(NarError::Misuse("token does not match the accepted length"));
        }
        let (next, event) = match self.state {
            State::Magic => {
                if tok != NAR_MAGIC {
                    return Err(NarError::BadMagic);
                }
                (State::NodeOpen, None)
            }
            State::NodeOpen | State::EntryOpen => {
                if tok != b"(" {
                    return Err(NarError::ExpectedOpenTag);
                }
                let next = if self.state == State::NodeOpen { State::TypeTag } else { State::NameTag };
                (next, None)
            }
            State::TypeTag => match tok {
                b"type" => (State::TypeValue, None),
                _ => return Err(unexpected("type", tok)),
            },
            State::TypeValue => match tok {
                b"regular" => (State::RegularBody, None),
                b"symlink" => (State::TargetTag, None),
                b"directory" => {
                    self.dirs.push(Frame::default());
                    (State::DirBody, Some(Event::Directory))
                }
                _ => return Err(NarError::UnknownType(lossy(tok))),
            },
            State::RegularBody => match tok {
                b"executable" => (State::ExecutableEmpty, None),
                b"contents" => (State::Size { executable: false }, None),
                _ => return Err(unexpected("contents", tok)),
            },
            State::ExecutableEmpty => (State::ContentsTag, None),
            State::ContentsTag => match tok {
                b"contents" => (State::Size { executable: true }, None),
                _ => return Err(unexpected("contents", tok)),
            },
            State::TargetTag => match tok {
                b"target" => (State::Target, None),
                _ => return Err(unexpected("target", tok)),
            },
            State::Target => (State::NodeClose, Some(Event::Symlink { target: tok })),
            State::NodeClose => match tok {
                b")" => (self.after_node(), None),
                _ => return Err(unexpected(")", tok)),
            },
            State::DirBody => match tok {
                b"entry" => (State::EntryOpen, None),
                b")" => {
                    self.dirs.pop();
                    (self.after_node(), Some(Event::DirectoryEnd))
                }
                _ => return Err(unexpected("entry", tok)),
            },
            State::NameTag => match tok {
                b"name" => (State::Name, None),
                _ => return Err(unexpected("name", tok)),
            },
            State::Name => {
                if !valid_name(tok) {
                    return Err(NarError::InvalidName(lossy(tok)));
                }
                let frame = self.dirs.last_mut().ok_or(NarError::Misuse("entry outside a directory"))?;
                if frame.prev.as_deref().is_some_and(|prev| tok <= prev) {
                    return Err(NarError::NotSorted { name: lossy(tok) });
                }
                frame.prev = Some(tok.to_vec());
                (State::NodeTag, Some(Event::Entry { name: tok }))
            }
            State::NodeTag => match tok {
                b"node" => {
                    if self.dirs.len() > self.limits.max_depth {
                        return Err(NarError::TooDeep { max: self.limits.max_depth });
                    }
                    (State::NodeOpen, None)
                }
                _ => return Err(unexpected("node", tok)),
            },
            State::EntryClose => match tok {
                b")" => (State::DirBody, Some(Event::EntryEnd)),
                _ => return Err(unexpected(")", tok)),
            },
            State::Size { .. } | State::Contents { .. } | State::Done => {
                return Err(NarError::Misuse("token not expected"))
            }
        };
        self.state = next;
        Ok(event)
    }

    /// Where a node that just closed leaves us.
    fn after_node(&self) -> State {
        if self.dirs.is_empty() {
            State::Done
        } else {
            State::EntryClose
        }
    }

    /// Accepts the size word of a regular file's contents.
    pub fn contents_size(&mut self, size: u64) -> Result<Event<'static>, NarError> {
        let State::Size { executable } = self.state else {
            return Err(NarError::Misuse("contents size not expected"));
        };
        let padded = size.checked_add(padding(size) as u64).and_then(|n| n.checked_add(8));
        self.account(padded.ok_or(NarError::TooLarge { max: u64::MAX })?)?;
        self.state = State::Contents { len: size };
        Ok(Event::Regular { executable, size })
    }

    /// Records that the contents and their padding were read.
    pub fn contents_done(&mut self) -> Result<(), NarError> {
        if !matches!(self.state, State::Contents { .. }) {
            return Err(NarError::Misuse("contents not expected"));
        }
        self.state = State::NodeClose;
        Ok(())
    }
}
