//! A cheap structural pre-check of untrusted Yjs v1 bytes, run before yrs
//! decodes them.
//!
//! yrs trusts the counts and lengths it reads: a 4-byte update whose client
//! count claims 268 million clients makes `Update::decode` reserve a 22 GB
//! hash table (and touch ~0.5 GB of it) before it notices the input ended;
//! 20 kB of nested `Any` arrays overflow the stack (an abort no
//! `catch_unwind` can stop); 24 kB of chained one-element items make the
//! commit-time squash hold 190 MB. The walk here reads the same lib0 v1
//! encoding yrs reads, field by field and with yrs's own integer rules, and
//! refuses an input before yrs sees it when
//!
//! - a count (clients, structs, `Any` elements and map entries, delete-set
//!   ranges, state-vector or awareness entries) is larger than the bytes left
//!   could hold, at one byte or more per element;
//! - a clock range (`clock + len` of a struct or a delete-set range) leaves
//!   `0..=i32::MAX` (yrs computes clock offsets in `i32`);
//! - `Any` values nest deeper than [`MAX_ANY_DEPTH`], or shared types inside
//!   the update nest deeper than [`MAX_TYPE_DEPTH`] (yrs recurses over both);
//! - a client id is wider than the 53 bits yrs keeps, or a struct's client
//!   appears twice in the struct section (yrs would mix two clock sequences
//!   in one block list);
//! - an item holds legacy `ContentJSON`, which yrs 0.28.1 cannot round-trip
//!   (a pending one makes every later state encoding panic);
//! - the estimated memory and copy work of applying the update (per-struct
//!   cost, commit-time squashing of chained items, splitting large items at
//!   points the update itself names) exceeds [`EXPANSION_FLOOR`] +
//!   [`EXPANSION_FACTOR`] × input length.
//!
//! What yrs only *stores* as a range costs nothing here: GC and Skip lengths,
//! `Deleted` content lengths and delete-set range lengths are kept as
//! `(clock, len)` pairs and never expanded into per-element memory.
//!
//! Everything valid that Yjs and yrs clients produce passes (see the tests
//! and `tests/integration/fuzz_regressions.rs`). The walk allocates at most a
//! small multiple of the input, and only for updates that can need it.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use yrs::block::{
    BLOCK_GC_REF_NUMBER, BLOCK_ITEM_ANY_REF_NUMBER, BLOCK_ITEM_BINARY_REF_NUMBER,
    BLOCK_ITEM_DELETED_REF_NUMBER, BLOCK_ITEM_DOC_REF_NUMBER, BLOCK_ITEM_EMBED_REF_NUMBER,
    BLOCK_ITEM_FORMAT_REF_NUMBER, BLOCK_ITEM_JSON_REF_NUMBER, BLOCK_ITEM_STRING_REF_NUMBER,
    BLOCK_ITEM_TYPE_REF_NUMBER, BLOCK_SKIP_REF_NUMBER, HAS_ORIGIN, HAS_PARENT_SUB,
    HAS_RIGHT_ORIGIN,
};
use yrs::sync::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2,
    MSG_SYNC_UPDATE, PERMISSION_DENIED,
};

/// Deepest nesting of `Any` arrays and maps accepted. yrs decodes, clones,
/// compares and drops `Any` recursively; 10 000 levels (20 kB) overflow a
/// 2 MiB tokio worker stack. 128 is serde_json's own limit, which already
/// applies to the JSON yrs parses (embeds, formatting attributes).
pub const MAX_ANY_DEPTH: usize = 128;

/// Deepest nesting of shared types created within one update. yrs deletes
/// and garbage-collects a type's children recursively; ~10 000 nested maps
/// (80 kB) deleted at once overflow a 2 MiB stack.
pub const MAX_TYPE_DEPTH: usize = 512;

/// Highest clock (and clock + length) accepted: yrs subtracts clocks as
/// `i32` while integrating. No real client gets near 2³¹ operations.
pub const MAX_CLOCK: u64 = i32::MAX as u64;

/// Expansion budget every input gets regardless of its size, in bytes.
pub const EXPANSION_FLOOR: u64 = 32 << 20;

/// Expansion budget per input byte. yrs itself spends ~20–200 bytes per
/// encoded byte on dense valid updates (a `Box<Item>` per 3–6 byte struct, a
/// whole `Doc` per 6-byte subdocument), so this bounds the superlinear costs
/// without refusing legitimate dense updates.
pub const EXPANSION_FACTOR: u64 = 256;

/// Why the guard refused an input. Offsets are byte positions in the checked
/// buffer (the update, state vector or awareness payload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("input ends inside {what} at byte {offset}")]
    Truncated { what: &'static str, offset: usize },
    #[error("malformed variable-length integer at byte {offset}")]
    BadVarInt { offset: usize },
    #[error("variable-length integer at byte {offset} is wider than {bits} bits")]
    VarIntOverflow { offset: usize, bits: u32 },
    #[error("{len} bytes follow the update's end at byte {offset}")]
    TrailingBytes { offset: usize, len: usize },
    #[error("{what} count {count} at byte {offset} cannot fit in the {remaining} bytes left")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        offset: usize,
        remaining: usize,
    },
    #[error("unknown {what} tag {tag} at byte {offset}")]
    UnknownTag {
        what: &'static str,
        tag: u64,
        offset: usize,
    },
    #[error("invalid UTF-8 in string at byte {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("{what} at byte {offset} is not supported")]
    Unsupported { what: &'static str, offset: usize },
    #[error("zero-length {what} at byte {offset}")]
    EmptyRange { what: &'static str, offset: usize },
    #[error("client id {client} at byte {offset} is wider than 53 bits")]
    ClientIdTooWide { client: u64, offset: usize },
    #[error("client {client} appears twice in the struct section")]
    DuplicateClient { client: u64 },
    #[error("clock range {clock}+{len} of client {client} passes {MAX_CLOCK}")]
    ClockOverflow { client: u64, clock: u64, len: u64 },
    #[error("{what} nested deeper than {limit}")]
    TooDeep { what: &'static str, limit: usize },
    #[error(
        "applying would take ~{estimated} bytes of memory and copying (limit {limit} for {input} input bytes)"
    )]
    TooExpensive {
        estimated: u64,
        limit: u64,
        input: usize,
    },
}

/// A message of a frame that the guard refused, by its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message #{index} refused by the decode guard")]
pub struct FrameRejected {
    pub index: usize,
    #[source]
    pub source: GuardError,
}

/// What a checked update holds, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    /// Bytes the update takes (up to the end of its delete set).
    pub len: usize,
    pub clients: usize,
    pub structs: usize,
    pub delete_ranges: usize,
    /// Subdocument items. yrs 0.28.1 never frees a document that holds one
    /// (a reference cycle): callers may want a policy for them.
    pub subdocs: usize,
    /// The estimate compared against the expansion budget.
    pub estimated_bytes: u64,
}

/// The expansion budget for an input of `len` bytes.
pub fn expansion_limit(len: usize) -> u64 {
    EXPANSION_FLOOR.saturating_add(EXPANSION_FACTOR.saturating_mul(len as u64))
}

/// Checks every payload of a y-websocket frame that yrs's `MessageReader`
/// would decode: state vectors (SyncStep1), updates (SyncStep2, Update) and
/// awareness updates. The framing is walked exactly as `MessageReader` walks
/// it, so that no payload it decodes escapes the check. Where yrs ends
/// quietly (the buffer ends inside a message), the frame is refused: a
/// frame cut short would otherwise have its complete messages applied and
/// its last one silently dropped.
///
/// # Errors
/// [`FrameRejected`] naming the first refused message.
pub fn check_frame(frame: &[u8]) -> Result<(), FrameRejected> {
    let mut r = Reader::new(frame);
    let mut index = 0;
    while let Some(payload) = next_message(&mut r) {
        let checked = match payload {
            Payload::StateVector(bytes) => check_state_vector_v1(bytes),
            Payload::Update(bytes) => check_update_v1(bytes).map(|_| ()),
            Payload::Awareness(bytes) => check_awareness_update_v1(bytes),
            Payload::Other => Ok(()),
            // yrs fails on this message and decodes nothing after it.
            Payload::Undecodable => return Ok(()),
            Payload::Truncated(source) => Err(source),
        };
        checked.map_err(|source| FrameRejected { index, source })?;
        index += 1;
    }
    Ok(())
}

enum Payload<'a> {
    StateVector(&'a [u8]),
    Update(&'a [u8]),
    Awareness(&'a [u8]),
    Other,
    Undecodable,
    /// The buffer ends inside the message's framing (where yrs's
    /// `MessageReader` stops without an error).
    Truncated(GuardError),
}

/// The next message as yrs's `Message::decode` sees it, or `None` at the
/// end of the frame.
fn next_message<'a>(r: &mut Reader<'a>) -> Option<Payload<'a>> {
    fn framed<'a>(r: &mut Reader<'a>) -> Result<Payload<'a>, GuardError> {
        let Some(tag) = r.var_u8()? else {
            return Ok(Payload::Undecodable);
        };
        Ok(match tag {
            MSG_SYNC => match r.var_u8()? {
                Some(MSG_SYNC_STEP_1) => Payload::StateVector(r.buf("sync payload")?),
                Some(MSG_SYNC_STEP_2 | MSG_SYNC_UPDATE) => Payload::Update(r.buf("sync payload")?),
                _ => Payload::Undecodable,
            },
            MSG_AWARENESS => Payload::Awareness(r.buf("awareness payload")?),
            MSG_AUTH => match r.var_u8()? {
                Some(PERMISSION_DENIED) => {
                    r.string("auth reason")?;
                    Payload::Other
                }
                Some(_) => Payload::Other,
                None => Payload::Undecodable,
            },
            MSG_QUERY_AWARENESS => Payload::Other,
            _ => {
                r.buf("custom payload")?;
                Payload::Other
            }
        })
    }
    if r.remaining() == 0 {
        return None;
    }
    match framed(r) {
        Ok(payload) => Some(payload),
        // `MessageReader` ends quietly at an end of buffer; any other
        // framing error makes yrs refuse the frame itself.
        Err(truncated @ GuardError::Truncated { .. }) => Some(Payload::Truncated(truncated)),
        Err(_) => Some(Payload::Undecodable),
    }
}

/// Checks a Yjs v1 state vector (the payload of SyncStep1).
///
/// # Errors
/// [`GuardError`] when an entry count cannot be backed by the bytes left.
pub fn check_state_vector_v1(bytes: &[u8]) -> Result<(), GuardError> {
    let mut r = Reader::new(bytes);
    // yrs: `read_var::<u32>() as usize`, then (client u64, clock u32) pairs.
    let entries = r.count_u32("state vector entry", 2)?;
    for _ in 0..entries {
        r.client()?;
        r.var_u32()?;
    }
    Ok(())
}

/// Checks a y-protocols awareness update.
///
/// # Errors
/// [`GuardError`] when the client count or a state's length cannot be
/// backed by the bytes left, a state is not UTF-8, or a clock would
/// overflow when yrs bumps it.
pub fn check_awareness_update_v1(bytes: &[u8]) -> Result<(), GuardError> {
    let mut r = Reader::new(bytes);
    // yrs: `read_var::<usize>()` (a u64 varint), then (client, clock, JSON).
    let offset = r.pos;
    let clients = r.var_u64()?;
    r.check_count("awareness client", clients, 3, offset)?;
    for _ in 0..clients {
        let client = r.client()?;
        let clock = r.var_u32()?;
        if clock == u32::MAX {
            // yrs answers a removal of its own state with `clock + 1`.
            return Err(GuardError::ClockOverflow {
                client,
                clock: clock.into(),
                len: 1,
            });
        }
        r.string("awareness state")?;
    }
    Ok(())
}

/// Checks a Yjs v1 document update (see the module documentation). Bytes
/// after the update's end are refused: yrs ignores them, no Yjs encoder
/// writes any, and a 63 MiB body behind a valid update would otherwise be
/// stored whole.
///
/// # Errors
/// [`GuardError`] for the first problem found.
pub fn check_update_v1(bytes: &[u8]) -> Result<UpdateSummary, GuardError> {
    let summary = check_update_prefix_v1(bytes)?;
    if summary.len < bytes.len() {
        return Err(GuardError::TrailingBytes {
            offset: summary.len,
            len: bytes.len() - summary.len,
        });
    }
    Ok(summary)
}

/// [`check_update_v1`] for the update that starts `bytes`, whatever
/// follows it: for data stored before trailing bytes were refused, which
/// must still load. [`UpdateSummary::len`] says where the update ends.
///
/// # Errors
/// [`GuardError`] for the first problem found in the update.
pub fn check_update_prefix_v1(bytes: &[u8]) -> Result<UpdateSummary, GuardError> {
    let mut costs = Costs::default();
    let walk = Walk::run(bytes, &mut costs)?;
    let mut estimated = costs.cost;
    if !costs.splittable.is_empty() {
        let mut counter = SplitCounter::new(&costs.splittable);
        Walk::run(bytes, &mut counter)?;
        estimated = estimated.saturating_add(counter.cost);
    }
    let limit = expansion_limit(bytes.len());
    if estimated > limit {
        return Err(GuardError::TooExpensive {
            estimated,
            limit,
            input: bytes.len(),
        });
    }
    if walk.types > MAX_TYPE_DEPTH {
        let mut graph = TypeGraph::default();
        Walk::run(bytes, &mut graph)?;
        if graph.max_depth() > MAX_TYPE_DEPTH {
            return Err(GuardError::TooDeep {
                what: "shared types",
                limit: MAX_TYPE_DEPTH,
            });
        }
    }
    Ok(UpdateSummary {
        len: walk.end,
        clients: walk.clients,
        structs: walk.structs,
        delete_ranges: walk.delete_ranges,
        subdocs: walk.subdocs,
        estimated_bytes: estimated,
    })
}

/// Where each struct and the delete set of an update sit in its bytes, for
/// cutting the update apart without decoding it into yrs (see
/// `room::gaps`). lib0 v1 encodes every struct on its own (no state carries
/// from one to the next), so a client's structs can be re-framed by copying
/// their bytes under a new header.
#[derive(Debug)]
pub struct Layout {
    /// One per client, in the order of the update; empty items, which yrs
    /// drops, are left out.
    pub sections: Vec<Section>,
    /// The delete set's ranges: `(client, clock, len)`.
    pub deletes: Vec<(u64, u32, u32)>,
    /// Where the delete set's encoding starts (it runs to the end).
    pub delete_set_at: usize,
}

/// One client's structs.
#[derive(Debug)]
pub struct Section {
    pub client: u64,
    pub structs: Vec<StructSpan>,
}

/// One struct of a [`Section`].
#[derive(Debug, Clone)]
pub struct StructSpan {
    pub clock: u32,
    pub len: u32,
    /// A Skip: a hole in the client's clocks, not content.
    pub skip: bool,
    pub bytes: Range<usize>,
    /// The ids this struct needs in a document before it can integrate:
    /// its left and right origins and its parent item.
    pub depends_on: [Option<(u64, u32)>; 3],
}

/// The [`Layout`] of a v1 update that passed [`check_update_v1`].
///
/// # Errors
/// As [`check_update_v1`]'s walk (which it repeats, without the cost
/// estimate).
pub fn layout(bytes: &[u8]) -> Result<Layout, GuardError> {
    #[derive(Default)]
    struct Collect {
        sections: Vec<Section>,
        deletes: Vec<(u64, u32, u32)>,
    }
    impl Visitor for Collect {
        fn on_struct(&mut self, s: &StructInfo) {
            let span = StructSpan {
                clock: s.clock,
                len: s.len,
                skip: s.kind == Kind::Skip,
                bytes: s.bytes.clone(),
                depends_on: [
                    s.origin,
                    s.right_origin,
                    match s.parent {
                        Parent::Id(client, clock) => Some((client, clock)),
                        _ => None,
                    },
                ],
            };
            match self.sections.last_mut() {
                Some(section) if section.client == s.client => section.structs.push(span),
                _ => self.sections.push(Section {
                    client: s.client,
                    structs: vec![span],
                }),
            }
        }
        fn on_delete_range(&mut self, client: u64, clock: u32, len: u32) {
            self.deletes.push((client, clock, len));
        }
    }
    let mut collect = Collect::default();
    let walk = Walk::run(bytes, &mut collect)?;
    Ok(Layout {
        sections: collect.sections,
        deletes: collect.deletes,
        delete_set_at: walk.delete_set_at,
    })
}

// Rough heap cost of what yrs builds per struct, measured on yrs 0.28.1:
// the `Block` slot in the decoded update, the boxed `Item`, a `Branch` for a
// shared type, a whole `Doc` (store, options, observers) for a subdocument.
const BLOCK_SLOT_BYTES: u64 = 32;
const ITEM_BYTES: u64 = 224;
const BRANCH_BYTES: u64 = 320;
const SUBDOC_BYTES: u64 = 1280;
/// `size_of::<Any>()`, the element size of `ItemContent::Any`.
const ANY_BYTES: u64 = 24;
/// Items smaller than this are not tracked for split costs: splitting one
/// costs at most its size per split point, and it has fewer split points than
/// bytes, so such items add at most this factor per input byte.
const SPLIT_TRACK_MIN_BYTES: u64 = 64;

/// One struct as the walk sees it, handed to a [`Visitor`].
struct StructInfo {
    client: u64,
    clock: u32,
    len: u32,
    /// Where the struct's encoding sits in the walked bytes.
    bytes: Range<usize>,
    /// Bytes of heap the content occupies once decoded.
    content_bytes: u64,
    origin: Option<(u64, u32)>,
    right_origin: Option<(u64, u32)>,
    parent: Parent,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    /// A root type, by name.
    Named,
    /// The item of a shared type, by ID.
    Id(u64, u32),
    /// Taken over from the origins while integrating.
    FromOrigins,
    /// GC and Skip have none.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gc,
    Skip,
    /// An item, with its content ref number (`info & 0b1111`).
    Item(u8),
}

trait Visitor {
    fn on_struct(&mut self, _s: &StructInfo) {}
    fn on_delete_range(&mut self, _client: u64, _clock: u32, _len: u32) {}
}

/// Walks an update exactly as `Update::decode` reads it, handing each
/// struct and delete range to a [`Visitor`].
struct Walk<'a> {
    r: Reader<'a>,
    clients: usize,
    structs: usize,
    delete_ranges: usize,
    types: usize,
    subdocs: usize,
    /// Where the delete set starts.
    delete_set_at: usize,
    /// Where the update ends (what follows, yrs ignores).
    end: usize,
}

/// The memory and copy work applying an update costs.
#[derive(Default)]
struct Costs {
    cost: u64,
    /// Chain state for the squash estimate (see `squash_cost`).
    run: Option<Run>,
    /// Items large enough that splitting them repeatedly is expensive.
    splittable: Vec<Span>,
}

/// The last item of a client, as far as squashing is concerned.
#[derive(Clone, Copy)]
struct Run {
    client: u64,
    end: u32,
    content_ref: u8,
    right_origin: Option<(u64, u32)>,
    /// Items in the chain so far.
    items: u64,
}

#[derive(Clone, Copy)]
struct Span {
    client: u64,
    start: u32,
    end: u32,
    bytes: u64,
}

impl<'a> Walk<'a> {
    fn run(bytes: &'a [u8], visitor: &mut impl Visitor) -> Result<Self, GuardError> {
        let mut walk = Self {
            r: Reader::new(bytes),
            clients: 0,
            structs: 0,
            delete_ranges: 0,
            types: 0,
            subdocs: 0,
            delete_set_at: 0,
            end: 0,
        };
        walk.structs_and_deletes(visitor)?;
        Ok(walk)
    }

    fn structs_and_deletes(&mut self, visitor: &mut impl Visitor) -> Result<(), GuardError> {
        // Every client needs its struct count, id and first clock.
        let clients = self.r.count_u32("client", 3)?;
        self.clients = clients as usize;
        let mut seen = HashSet::with_capacity(self.clients.min(1024));
        for _ in 0..clients {
            // GC and Skip need two bytes (info, length), items more.
            let structs = self.r.count_u32("struct", 2)?;
            let client = self.r.client()?;
            if !seen.insert(client) {
                return Err(GuardError::DuplicateClient { client });
            }
            let mut clock = u64::from(self.r.var_u32()?);
            check_clock(client, clock, 0)?;
            for _ in 0..structs {
                let start = self.r.pos;
                if let Some(mut s) = self.read_struct(client, clock)? {
                    s.bytes = start..self.r.pos;
                    check_clock(client, clock, s.len.into())?;
                    clock += u64::from(s.len);
                    self.structs += 1;
                    visitor.on_struct(&s);
                }
            }
        }
        // Delete set: clients, each with (clock, len) ranges.
        self.delete_set_at = self.r.pos;
        let clients = self.r.count_u32("delete set client", 2)?;
        for _ in 0..clients {
            let client = self.r.client()?;
            let ranges = self.r.count_u32("delete set range", 2)?;
            for _ in 0..ranges {
                let clock = self.r.var_u32()?;
                let len = self.r.var_u32()?;
                check_clock(client, clock.into(), len.into())?;
                self.delete_ranges += 1;
                visitor.on_delete_range(client, clock, len);
            }
        }
        // yrs ignores whatever follows the delete set (see
        // `check_update_v1`).
        self.end = self.r.pos;
        Ok(())
    }

    /// Reads one struct at `clock`; `None` for an empty item, which yrs
    /// drops without advancing the clock.
    fn read_struct(&mut self, client: u64, clock: u64) -> Result<Option<StructInfo>, GuardError> {
        let offset = self.r.pos;
        let info = self.r.u8("struct info")?;
        let clock = clock as u32; // checked against MAX_CLOCK by the caller
        let range = |kind, len| StructInfo {
            client,
            clock,
            len,
            bytes: 0..0,
            content_bytes: 0,
            origin: None,
            right_origin: None,
            parent: Parent::None,
            kind,
        };
        match info {
            BLOCK_SKIP_REF_NUMBER | BLOCK_GC_REF_NUMBER => {
                let len = self.r.var_u32()?;
                if len == 0 {
                    return Err(GuardError::EmptyRange {
                        what: "GC or Skip struct",
                        offset,
                    });
                }
                let kind = if info == BLOCK_GC_REF_NUMBER {
                    Kind::Gc
                } else {
                    Kind::Skip
                };
                Ok(Some(range(kind, len)))
            }
            _ => self.read_item(client, clock, info, offset),
        }
    }

    fn read_item(
        &mut self,
        client: u64,
        clock: u32,
        info: u8,
        offset: usize,
    ) -> Result<Option<StructInfo>, GuardError> {
        let r = &mut self.r;
        let origin = if info & HAS_ORIGIN != 0 {
            Some(r.id()?)
        } else {
            None
        };
        let right_origin = if info & HAS_RIGHT_ORIGIN != 0 {
            Some(r.id()?)
        } else {
            None
        };
        let parent = if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
            // `read_parent_info`: a u32 varint, 1 meaning "root type by name".
            let parent = if r.var_u32()? == 1 {
                r.string("parent name")?;
                Parent::Named
            } else {
                let (c, k) = r.id()?;
                Parent::Id(c, k)
            };
            if info & HAS_PARENT_SUB != 0 {
                r.string("parent sub key")?;
            }
            parent
        } else {
            Parent::FromOrigins
        };
        let content_ref = info & 0b1111;
        let (len, content_bytes) = match content_ref {
            BLOCK_ITEM_DELETED_REF_NUMBER => (r.var_u32()?, 0),
            BLOCK_ITEM_JSON_REF_NUMBER => {
                // yrs 0.28.1 reads `len + 1` strings here but writes `len`
                // (as Yjs does): such an item decodes wrongly, and once
                // pending, every later `encode_state_as_update` panics. Yjs
                // 13 only reads this legacy content; no current client
                // writes it.
                return Err(GuardError::Unsupported {
                    what: "legacy JSON content",
                    offset,
                });
            }
            BLOCK_ITEM_BINARY_REF_NUMBER => (1, r.buf("binary content")?.len() as u64),
            BLOCK_ITEM_STRING_REF_NUMBER => {
                let s = r.string("string content")?;
                let units: usize = s.chars().map(char::len_utf16).sum();
                (units as u32, s.len() as u64)
            }
            BLOCK_ITEM_EMBED_REF_NUMBER => (1, r.string("embed JSON")?.len() as u64),
            BLOCK_ITEM_FORMAT_REF_NUMBER => {
                let key = r.string("format key")?.len();
                let value = r.string("format JSON")?.len();
                (1, (key + value) as u64)
            }
            BLOCK_ITEM_TYPE_REF_NUMBER => {
                let at = r.pos;
                match r.u8("type ref")? {
                    // Array, Map, Text, XmlFragment, XmlHook, XmlText, SubDoc, Undefined
                    0 | 1 | 2 | 4 | 5 | 6 | 9 | 15 => {}
                    3 => {
                        r.string("XML element name")?;
                    }
                    tag => {
                        return Err(GuardError::UnknownTag {
                            what: "type ref",
                            tag: tag.into(),
                            offset: at,
                        });
                    }
                }
                self.types += 1;
                (1, BRANCH_BYTES)
            }
            BLOCK_ITEM_ANY_REF_NUMBER => {
                let at = r.pos;
                let n = r.var_u32()?;
                r.check_count("Any value", n.into(), 1, at)?;
                for _ in 0..n {
                    skip_any(r, 1)?;
                }
                let start = at; // the values' own bytes stand for their heap parts
                let heap = (r.pos - start) as u64;
                (n, u64::from(n) * ANY_BYTES + heap)
            }
            BLOCK_ITEM_DOC_REF_NUMBER => {
                let guid = r.string("subdocument guid")?.len() as u64;
                self.subdocs += 1;
                skip_any(r, 1)?;
                (1, SUBDOC_BYTES + guid)
            }
            tag => {
                return Err(GuardError::UnknownTag {
                    what: "item content",
                    tag: tag.into(),
                    offset,
                });
            }
        };
        if len == 0 {
            return Ok(None);
        }
        Ok(Some(StructInfo {
            client,
            clock,
            len,
            bytes: 0..0,
            content_bytes,
            origin,
            right_origin,
            parent,
            kind: Kind::Item(content_ref),
        }))
    }
}

impl Visitor for Costs {
    /// Adds a struct's cost: its own memory and what squashing it into the
    /// item before it copies.
    fn on_struct(&mut self, s: &StructInfo) {
        let own = BLOCK_SLOT_BYTES
            + match s.kind {
                Kind::Item(_) => ITEM_BYTES + s.content_bytes,
                Kind::Gc | Kind::Skip => 0,
            };
        let squash = self.squash_cost(s);
        self.cost = self.cost.saturating_add(own.saturating_add(squash));
        if let Kind::Item(BLOCK_ITEM_STRING_REF_NUMBER | BLOCK_ITEM_ANY_REF_NUMBER) = s.kind
            && s.len >= 2
            && s.content_bytes >= SPLIT_TRACK_MIN_BYTES
        {
            self.splittable.push(Span {
                client: s.client,
                start: s.clock,
                end: s.clock + s.len,
                bytes: s.content_bytes,
            });
        }
    }
}

impl Costs {
    /// yrs squashes chains of items at commit from the right: the item
    /// before the last absorbs a copy of the last, the one before that a
    /// copy of both, and so on, every copy alive until the chain is done.
    /// The k-th item of a chain is therefore copied k-1 times.
    fn squash_cost(&mut self, s: &StructInfo) -> u64 {
        let Kind::Item(content_ref) = s.kind else {
            self.run = None;
            return 0;
        };
        let mergeable = matches!(
            content_ref,
            BLOCK_ITEM_STRING_REF_NUMBER | BLOCK_ITEM_ANY_REF_NUMBER
        );
        let continues = match self.run {
            Some(run) => {
                mergeable
                    && run.client == s.client
                    && run.end == s.clock
                    && run.content_ref == content_ref
                    && run.right_origin == s.right_origin
                    && s.origin == Some((s.client, s.clock.wrapping_sub(1)))
            }
            None => false,
        };
        let copies = match (&mut self.run, continues) {
            (Some(run), true) => {
                run.end = s.clock + s.len;
                run.items += 1;
                run.items - 1
            }
            _ => {
                self.run = mergeable.then_some(Run {
                    client: s.client,
                    end: s.clock + s.len,
                    content_ref,
                    right_origin: s.right_origin,
                    items: 1,
                });
                0
            }
        };
        // Strings grow by doubling: count their copies twice.
        let per_copy = if content_ref == BLOCK_ITEM_STRING_REF_NUMBER {
            2 * s.content_bytes
        } else {
            s.content_bytes
        };
        copies.saturating_mul(per_copy)
    }
}

fn check_clock(client: u64, clock: u64, len: u64) -> Result<(), GuardError> {
    if clock + len > MAX_CLOCK {
        return Err(GuardError::ClockOverflow { client, clock, len });
    }
    Ok(())
}

/// Skips one lib0 `Any` value the way `Any::decode` reads it.
fn skip_any(r: &mut Reader<'_>, depth: usize) -> Result<(), GuardError> {
    if depth > MAX_ANY_DEPTH {
        return Err(GuardError::TooDeep {
            what: "Any values",
            limit: MAX_ANY_DEPTH,
        });
    }
    let offset = r.pos;
    match r.u8("Any tag")? {
        // undefined, null, false, true
        127 | 126 | 121 | 120 => {}
        // integer: a signed varint
        125 => r.var_i64()?,
        // float32
        124 => {
            r.take(4, "float32")?;
        }
        // float64, bigint
        123 | 122 => {
            r.take(8, "float64")?;
        }
        119 => {
            r.string("Any string")?;
        }
        // Map<string, Any>: `read_var::<usize>()` entries of key and value
        118 => {
            let at = r.pos;
            let n = r.var_u64()?;
            r.check_count("Any map entry", n, 2, at)?;
            for _ in 0..n {
                r.string("Any map key")?;
                skip_any(r, depth + 1)?;
            }
        }
        // Array<Any>
        117 => {
            let at = r.pos;
            let n = r.var_u64()?;
            r.check_count("Any array element", n, 1, at)?;
            for _ in 0..n {
                skip_any(r, depth + 1)?;
            }
        }
        116 => {
            r.buf("Any buffer")?;
        }
        tag => {
            return Err(GuardError::UnknownTag {
                what: "Any",
                tag: tag.into(),
                offset,
            });
        }
    }
    Ok(())
}

/// Counts, for the large items of an update, the points at which the same
/// update makes yrs split them: a left origin splits after its clock, a
/// right origin at its clock, a delete range at both ends. Each split copies
/// the item (both halves are fresh allocations), so an item of `b` bytes
/// split `s` times costs about `s × b`.
struct SplitCounter<'s> {
    /// Large items by (client, start), non-overlapping per client.
    spans: &'s [Span],
    index: HashMap<u64, (usize, usize)>,
    cost: u64,
}

impl<'s> SplitCounter<'s> {
    fn new(spans: &'s [Span]) -> Self {
        // The walk visits each client once, in clock order: spans of one
        // client are contiguous and sorted.
        let mut index: HashMap<u64, (usize, usize)> = HashMap::new();
        for (i, span) in spans.iter().enumerate() {
            index
                .entry(span.client)
                .and_modify(|range| range.1 = i + 1)
                .or_insert((i, i + 1));
        }
        Self {
            spans,
            index,
            cost: 0,
        }
    }

    fn split_at(&mut self, client: u64, clock: u64) {
        let Some(&(from, to)) = self.index.get(&client) else {
            return;
        };
        let spans = &self.spans[from..to];
        let i = spans.partition_point(|s| u64::from(s.end) <= clock);
        if let Some(span) = spans.get(i)
            && u64::from(span.start) < clock
            && clock < u64::from(span.end)
        {
            self.cost = self.cost.saturating_add(span.bytes);
        }
    }
}

impl Visitor for SplitCounter<'_> {
    fn on_struct(&mut self, s: &StructInfo) {
        if let Some((client, clock)) = s.origin {
            self.split_at(client, u64::from(clock) + 1);
        }
        if let Some((client, clock)) = s.right_origin {
            self.split_at(client, clock.into());
        }
    }

    fn on_delete_range(&mut self, client: u64, clock: u32, len: u32) {
        self.split_at(client, clock.into());
        self.split_at(client, u64::from(clock) + u64::from(len));
    }
}

/// The parent links of an update's structs, to find how deep the shared
/// types it creates nest. Built only for updates with more than
/// [`MAX_TYPE_DEPTH`] types: fewer cannot nest deeper than that.
#[derive(Default)]
struct TypeGraph {
    nodes: Vec<Node>,
}

#[derive(Clone, Copy)]
struct Node {
    client: u64,
    start: u32,
    end: u32,
    parent: Parent,
    /// For items taking their parent from their origins.
    origin: Option<(u64, u32)>,
    right_origin: Option<(u64, u32)>,
    is_type: bool,
}

impl Visitor for TypeGraph {
    fn on_struct(&mut self, s: &StructInfo) {
        self.nodes.push(Node {
            client: s.client,
            start: s.clock,
            end: s.clock + s.len,
            parent: s.parent,
            origin: s.origin,
            right_origin: s.right_origin,
            is_type: s.kind == Kind::Item(BLOCK_ITEM_TYPE_REF_NUMBER),
        });
    }
}

impl TypeGraph {
    /// The deepest nesting of types, counting a root type's children as 1.
    /// Iterative (a chain of parents can be as long as the update), and a
    /// cycle, which yrs would never integrate, ends a chain.
    fn max_depth(mut self) -> usize {
        const UNKNOWN: u32 = u32::MAX;
        const VISITING: u32 = u32::MAX - 1;
        self.nodes.sort_unstable_by_key(|n| (n.client, n.start));
        let find = |nodes: &[Node], (client, clock): (u64, u32)| -> Option<usize> {
            let i = nodes.partition_point(|n| (n.client, n.end) <= (client, clock));
            nodes
                .get(i)
                .filter(|n| n.client == client && n.start <= clock)
                .map(|_| i)
        };
        // `depth[i]`: how many types enclose node i within this update.
        let mut depth = vec![UNKNOWN; self.nodes.len()];
        let mut path: Vec<(usize, u32)> = Vec::new();
        let mut max = 0;
        for start in 0..self.nodes.len() {
            let mut at = start;
            let base = loop {
                match depth[at] {
                    VISITING => break 0,
                    UNKNOWN => {}
                    known => break known,
                }
                depth[at] = VISITING;
                let node = self.nodes[at];
                let next = match node.parent {
                    Parent::Id(c, k) => find(&self.nodes, (c, k))
                        .filter(|&p| self.nodes[p].is_type)
                        .map(|p| (p, 1)),
                    Parent::FromOrigins => node
                        .origin
                        .or(node.right_origin)
                        .and_then(|id| find(&self.nodes, id))
                        .map(|p| (p, 0)),
                    Parent::Named | Parent::None => None,
                };
                match next {
                    Some((p, step)) => {
                        path.push((at, step));
                        at = p;
                    }
                    None => {
                        path.push((at, 0));
                        break 0;
                    }
                }
            };
            // Unwind: each node's depth is its parent's plus its step.
            let mut acc = base;
            while let Some((i, step)) = path.pop() {
                // The last pushed node is the one the chain ended at (when it
                // ended at a root), whose own step is 0.
                acc = acc.saturating_add(step);
                depth[i] = acc;
                if self.nodes[i].is_type {
                    max = max.max(acc as usize + 1);
                }
            }
        }
        max
    }
}

/// A cursor over lib0 v1 bytes whose integer reads match yrs's exactly
/// (including how over-long varints wrap), so that the guard and yrs always
/// agree on where each field starts.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, GuardError> {
        let byte = *self.buf.get(self.pos).ok_or(GuardError::Truncated {
            what,
            offset: self.pos,
        })?;
        self.pos += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], GuardError> {
        if len > self.remaining() {
            return Err(GuardError::Truncated {
                what,
                offset: self.pos,
            });
        }
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    /// yrs's `read_var::<u32>()`, field for field, except that a value
    /// wider than 32 bits is refused where yrs wraps it (2^40 would read
    /// as 256: a length or clock silently other than the sender's).
    fn var_u32(&mut self) -> Result<u32, GuardError> {
        let start = self.pos;
        let value = self.var()?;
        u32::try_from(value).map_err(|_| GuardError::VarIntOverflow {
            offset: start,
            bits: 32,
        })
    }

    /// yrs's `read_var::<u64>()` (also used for `usize`), refusing values
    /// wider than 64 bits.
    fn var_u64(&mut self) -> Result<u64, GuardError> {
        let start = self.pos;
        let value = self.var()?;
        u64::try_from(value).map_err(|_| GuardError::VarIntOverflow {
            offset: start,
            bits: 64,
        })
    }

    /// An unsigned lib0 varint as wide as it is written (yrs's loop: more
    /// than ten continuation bytes are an error), for the callers to check
    /// against their type's width.
    fn var(&mut self) -> Result<u128, GuardError> {
        let start = self.pos;
        let mut num = 0u128;
        let mut shift = 0u32;
        loop {
            let b = self.u8("varint")?;
            if shift < 128 {
                num |= u128::from(b & 0x7F) << shift;
            }
            shift += 7;
            if b < 0x80 {
                return Ok(num);
            }
            if shift > 70 {
                return Err(GuardError::BadVarInt { offset: start });
            }
        }
    }

    /// yrs's `read_var::<u8>()`: a u32 varint that must fit a byte. `None`
    /// where yrs fails with "invalid varint" (it then refuses the frame).
    fn var_u8(&mut self) -> Result<Option<u8>, GuardError> {
        match self.var_u32() {
            Ok(v) => Ok(u8::try_from(v).ok()),
            Err(GuardError::BadVarInt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A lib0 signed varint (`Any` integer). yrs's reader shifts past 64 bits
    /// (a panic in debug builds) on an eleventh byte and negates `i64::MIN`
    /// on a tenth; lib0 and yrs write at most five bytes, so more than nine
    /// is refused.
    fn var_i64(&mut self) -> Result<(), GuardError> {
        let start = self.pos;
        for _ in 0..9 {
            if self.u8("signed varint")? < 0x80 {
                return Ok(());
            }
        }
        Err(GuardError::BadVarInt { offset: start })
    }

    /// A client id: yrs's `ClientID::new` keeps 53 bits (asserting so in
    /// debug builds), so wider ids would alias narrower ones.
    fn client(&mut self) -> Result<u64, GuardError> {
        let offset = self.pos;
        let client = self.var_u64()?;
        if client >> 53 != 0 {
            return Err(GuardError::ClientIdTooWide { client, offset });
        }
        Ok(client)
    }

    fn id(&mut self) -> Result<(u64, u32), GuardError> {
        let client = self.client()?;
        let clock = self.var_u32()?;
        Ok((client, clock))
    }

    /// `read_buf`: a u32 varint length, then that many bytes.
    fn buf(&mut self, what: &'static str) -> Result<&'a [u8], GuardError> {
        let len = self.var_u32()?;
        self.take(len as usize, what)
    }

    fn string(&mut self, what: &'static str) -> Result<&'a str, GuardError> {
        let offset = self.pos;
        let bytes = self.buf(what)?;
        std::str::from_utf8(bytes).map_err(|_| GuardError::InvalidUtf8 { offset })
    }

    /// Reads a u32 varint count and checks it against the bytes left.
    fn count_u32(&mut self, what: &'static str, min_bytes_each: u64) -> Result<u64, GuardError> {
        let offset = self.pos;
        let count = u64::from(self.var_u32()?);
        self.check_count(what, count, min_bytes_each, offset)?;
        Ok(count)
    }

    fn check_count(
        &self,
        what: &'static str,
        count: u64,
        min_bytes_each: u64,
        offset: usize,
    ) -> Result<(), GuardError> {
        if count.saturating_mul(min_bytes_each) > self.remaining() as u64 {
            return Err(GuardError::CountTooLarge {
                what,
                count,
                offset,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{self, Edit, Source};
    use proptest::prelude::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Map, ReadTxn, StateVector, Text, Transact, Update};

    fn var(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        var(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }

    /// One client (7) with `structs` structs from clock 0; the caller
    /// writes the structs and the delete set.
    fn header(structs: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for n in [1, structs, 7, 0] {
            var(&mut out, n);
        }
        out
    }

    /// An `Any` item in root array "a" holding `values` (already encoded).
    fn any_item(count: u64, values: &[u8]) -> Vec<u8> {
        let mut out = header(1);
        out.push(BLOCK_ITEM_ANY_REF_NUMBER);
        var(&mut out, 1);
        string(&mut out, "a");
        var(&mut out, count);
        out.extend_from_slice(values);
        var(&mut out, 0);
        out
    }

    fn refused(bytes: &[u8]) -> GuardError {
        check_update_v1(bytes).expect_err("the guard should refuse this")
    }

    #[test]
    fn counts_beyond_the_input_are_refused() {
        // 4 bytes that make yrs reserve a 22 GB client table.
        let mut clients = Vec::new();
        var(&mut clients, 268_435_455);
        assert!(matches!(
            refused(&clients),
            GuardError::CountTooLarge { what: "client", .. }
        ));
        let mut structs = Vec::new();
        for n in [1, 268_435_455, 7, 0] {
            var(&mut structs, n);
        }
        assert!(matches!(
            refused(&structs),
            GuardError::CountTooLarge { what: "struct", .. }
        ));
        assert!(matches!(
            refused(&any_item(1 << 28, &[])),
            GuardError::CountTooLarge {
                what: "Any value",
                ..
            }
        ));
        let mut map = vec![118];
        var(&mut map, 1 << 24);
        assert!(matches!(
            refused(&any_item(1, &map)),
            GuardError::CountTooLarge {
                what: "Any map entry",
                ..
            }
        ));
        let mut sv = Vec::new();
        var(&mut sv, 268_435_455);
        assert!(check_state_vector_v1(&sv).is_err());
        assert!(check_awareness_update_v1(&sv).is_err());
    }

    #[test]
    fn deep_any_nesting_is_refused_before_it_overflows_the_stack() {
        let ok = [117, 1].repeat(MAX_ANY_DEPTH - 1);
        let mut values = ok.clone();
        values.push(126);
        check_update_v1(&any_item(1, &values)).unwrap();
        let mut deep = [117, 1].repeat(10_000);
        deep.push(126);
        assert!(matches!(
            refused(&any_item(1, &deep)),
            GuardError::TooDeep { .. }
        ));
    }

    #[test]
    fn clock_ranges_past_i32_are_refused() {
        let mut gc = header(2);
        gc.push(BLOCK_GC_REF_NUMBER);
        var(&mut gc, u64::from(u32::MAX));
        gc.push(BLOCK_GC_REF_NUMBER);
        var(&mut gc, 5);
        var(&mut gc, 0);
        assert!(matches!(refused(&gc), GuardError::ClockOverflow { .. }));
        let mut ds = Vec::new();
        for n in [0, 1, 1, 1, 5, u64::from(u32::MAX)] {
            var(&mut ds, n);
        }
        assert!(matches!(refused(&ds), GuardError::ClockOverflow { .. }));
    }

    #[test]
    fn huge_ranges_that_yrs_only_stores_are_fine() {
        // GC and Deleted lengths and delete ranges are (clock, len) pairs in
        // yrs: two billion of them cost a few bytes.
        let mut gc = header(1);
        gc.push(BLOCK_GC_REF_NUMBER);
        var(&mut gc, 2_000_000_000);
        var(&mut gc, 1);
        for n in [9, 1, 0, 2_000_000_000] {
            var(&mut gc, n);
        }
        let summary = check_update_v1(&gc).unwrap();
        assert!(summary.estimated_bytes < 1024, "{summary:?}");
    }

    #[test]
    fn a_chain_of_single_items_is_priced_by_its_squash() {
        // yrs squashes n chained one-value items holding n²/2 copies at once.
        let chain = |n: u64| {
            let mut out = header(n);
            out.push(BLOCK_ITEM_ANY_REF_NUMBER);
            var(&mut out, 1);
            string(&mut out, "a");
            out.extend_from_slice(&[1, 126]);
            for i in 1..n {
                out.push(BLOCK_ITEM_ANY_REF_NUMBER | HAS_ORIGIN);
                for v in [7, i - 1, 1] {
                    var(&mut out, v);
                }
                out.push(126);
            }
            var(&mut out, 0);
            out
        };
        check_update_v1(&chain(100)).unwrap();
        assert!(matches!(
            refused(&chain(4000)),
            GuardError::TooExpensive { .. }
        ));
    }

    #[test]
    fn duplicate_struct_clients_are_refused() {
        let mut out = Vec::new();
        var(&mut out, 2);
        for _ in 0..2 {
            for n in [1, 7, 0] {
                var(&mut out, n);
            }
            out.push(BLOCK_ITEM_STRING_REF_NUMBER);
            var(&mut out, 1);
            string(&mut out, "t");
            string(&mut out, "x");
        }
        var(&mut out, 0);
        assert_eq!(refused(&out), GuardError::DuplicateClient { client: 7 });
    }

    #[test]
    fn what_yrs_mishandles_is_refused() {
        // Legacy JSON content: yrs reads one string more than it writes.
        let mut json = header(1);
        json.push(BLOCK_ITEM_JSON_REF_NUMBER);
        var(&mut json, 1);
        string(&mut json, "a");
        var(&mut json, 0);
        string(&mut json, "1");
        var(&mut json, 0);
        assert!(matches!(refused(&json), GuardError::Unsupported { .. }));
        // A client id past 53 bits aliases a narrower one in yrs.
        let mut wide = Vec::new();
        for n in [1, 0, 1 << 60, 0, 0] {
            var(&mut wide, n);
        }
        assert!(matches!(refused(&wide), GuardError::ClientIdTooWide { .. }));
    }

    #[test]
    fn varints_are_read_exactly_as_yrs_reads_them() {
        use yrs::encoding::read::{Cursor, Read};
        let samples: [&[u8]; 5] = [
            &[0x7F],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            &[0xFF; 10],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            &[
                0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            ],
        ];
        for bytes in samples {
            // Where the value fits, the same value and the same end; where
            // it does not, yrs wraps it and the guard refuses.
            match (
                Reader::new(bytes).var_u32(),
                Cursor::new(bytes).read_var::<u32>(),
            ) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{bytes:?}"),
                (Err(GuardError::VarIntOverflow { .. }), Ok(_)) => {}
                (Err(_), Err(_)) => {}
                other => panic!("{bytes:?}: {other:?}"),
            }
            match (
                Reader::new(bytes).var_u64(),
                Cursor::new(bytes).read_var::<u64>(),
            ) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{bytes:?}"),
                (Err(GuardError::VarIntOverflow { .. }), Ok(_)) => {}
                (Err(_), Err(_)) => {}
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // 2^40 as a clock or length: yrs's shifts wrap, and it reads 256.
        let wide = [0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
        assert_eq!(Cursor::new(&wide[..]).read_var::<u32>().unwrap(), 256);
        assert!(matches!(
            Reader::new(&wide).var_u32(),
            Err(GuardError::VarIntOverflow { bits: 32, .. })
        ));
    }

    #[test]
    fn frames_are_walked_like_message_reader() {
        let mut frame = crate::protocol::encode_sync_step1(&StateVector::default()).to_vec();
        frame.extend_from_slice(&[0, 0, 4, 0xFF, 0xFF, 0xFF, 0x7F]);
        let err = check_frame(&frame).unwrap_err();
        assert_eq!(err.index, 1);
        // A truncated trailer is where MessageReader stops quietly; the
        // guard refuses it so the messages before it are not applied alone.
        let err = check_frame(&[3, 0, 2, 200]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(matches!(err.source, GuardError::Truncated { .. }));
        check_frame(&[9, 2, 0xAA, 0xBB]).unwrap();
    }

    #[test]
    fn bytes_after_the_update_are_refused_but_stored_ones_load() {
        let doc = Doc::with_client_id(4);
        let text = doc.get_or_insert_text("t");
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "kept");
            txn.encode_update_v1()
        };
        let mut padded = update.clone();
        padded.extend_from_slice(&[0xAB; 1000]);
        assert!(matches!(
            check_update_v1(&padded),
            Err(GuardError::TrailingBytes { len: 1000, .. })
        ));
        assert_eq!(check_update_prefix_v1(&padded).unwrap().len, update.len());
        assert_eq!(check_update_v1(&update).unwrap().len, update.len());
        // What an earlier version stored with such a tail still loads.
        let stored = crate::room::core::doc_from_updates([padded.as_slice()]).unwrap();
        let loaded = stored.doc.get_or_insert_text("t");
        assert_eq!(
            yrs::GetString::get_string(&loaded, &stored.doc.transact()),
            "kept"
        );
    }

    #[test]
    fn subdocuments_pass() {
        let doc = Doc::with_client_id(5);
        let map = doc.get_or_insert_map("m");
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, "sub", Doc::new());
        let update = txn.encode_update_v1();
        drop(txn);
        check_update_v1(&update).unwrap();
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        check_update_v1(&state).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every update yrs produces for random edits (text with formatting
        /// and embeds, maps, arrays, nested types, XML, deletes) passes, as
        /// do the whole state and the diff against an earlier state.
        #[test]
        fn accepts_what_yrs_produces(script in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let doc = Doc::with_client_id(3);
            let text = doc.get_or_insert_text("t");
            let mut source = Source::new(&script);
            let mut middle = None;
            let mut n = 0;
            while !source.is_empty() {
                let edit = Edit::read(&mut source);
                let update = fuzzing::apply_edit(&doc, &edit);
                prop_assert!(check_update_v1(&update).is_ok(), "{edit:?}: {:?}", check_update_v1(&update));
                Update::decode_v1(&update).unwrap();
                n += 1;
                if n == 20 {
                    middle = Some(doc.transact().state_vector());
                }
            }
            let txn = doc.transact();
            let state = txn.encode_state_as_update_v1(&StateVector::default());
            prop_assert!(check_update_v1(&state).is_ok());
            if let Some(sv) = middle {
                let diff = txn.encode_state_as_update_v1(&sv);
                prop_assert!(check_update_v1(&diff).is_ok());
            }
            let _ = text.len(&txn);
        }
    }
}
