//! The bodies of the fuzz targets in `fuzz/`, kept in this crate (behind
//! its `fuzzing` feature, so the server does not ship them) so that
//! `tests/integration/fuzz_regressions.rs` replays every saved finding
//! through exactly the code the fuzzer ran.
//!
//! Each function takes the fuzzer's raw bytes and panics only on a real
//! finding (a broken invariant); the fuzzer treats any panic, even one yrs
//! would have caught, as a crash.

use std::sync::Arc;

use bytes::Bytes;
use yrs::block::ClientID;
use yrs::types::ToJson;
use yrs::types::text::YChange;
use yrs::types::xml::{XmlElementPrelim, XmlTextPrelim};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, Doc, GetString, Map, MapPrelim, MapRef, Out, ReadTxn,
    StateVector, Text, TextPrelim, TextRef, Transact, TransactionMut, Update, WriteTxn,
    XmlFragment,
};

use crate::decode_guard;
use crate::protocol::{self, DocUpdate};
use crate::room::held::HeldUpdates;
use crate::room::{Access, Effects, PeerId, Rejected, Room, RoomError};
use crate::subdocs::OwnedDoc;

/// What one input did, for the regression test's assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guard or the decoder refused the input.
    Refused,
    /// yrs decoded the input but would not apply it.
    NotApplied,
    /// The input went through.
    Applied,
}

/// A document with some of everything, for updates to land on.
pub fn seeded_doc() -> Doc {
    let doc = Doc::with_client_id(1);
    {
        let mut txn = doc.transact_mut();
        let text = txn.get_or_insert_text("t");
        text.insert(&mut txn, 0, "hello world");
        text.format(&mut txn, 0, 5, bold());
        let map = txn.get_or_insert_map("m");
        map.insert(&mut txn, "k", 1);
        map.insert(&mut txn, "nested", MapPrelim::default());
        let array = txn.get_or_insert_array("a");
        array.insert_range(&mut txn, 0, [1, 2, 3]);
        let xml = txn.get_or_insert_xml_fragment("x");
        xml.push_back(&mut txn, XmlTextPrelim::new("xml"));
    }
    doc
}

/// Target `frame_into_room`: one frame from a joined peer into a room, as a
/// connection task and the room owner would handle it; then a fresh peer
/// syncs, so that encoding whatever the frame left behind is exercised too.
///
/// Frames are parsed under the server's default policy, which refuses
/// updates that create subdocuments: yrs 0.28.1 frees memory it still uses
/// when a container holding one is deleted (see [`crate::subdocs`]), so a
/// room that allows them is not fuzzed until yrs is fixed.
///
/// The same bytes also go in as a Hocuspocus provider's message
/// ([`crate::hocuspocus::parse`]); one that carries a room message is
/// handled as the y-websocket frame it holds.
pub fn frame_into_room(data: &[u8]) -> Outcome {
    let frame = Bytes::copy_from_slice(data);
    if let Ok(incoming) = crate::hocuspocus::parse(&frame)
        && let crate::hocuspocus::ProviderMessage::Room(inner) = incoming.message
    {
        y_websocket_frame_into_room(&inner);
    }
    y_websocket_frame_into_room(data)
}

fn y_websocket_frame_into_room(data: &[u8]) -> Outcome {
    let mut room = Room::new(seeded_doc());
    // Half the inputs go through the held awareness path the server uses.
    let holds_awareness = data.len().is_multiple_of(2);
    if holds_awareness {
        room = room.hold_awareness();
    }
    room.join(1, Access::ReadWrite);
    room.join(2, Access::ReadOnly);
    let frame = Bytes::copy_from_slice(data);
    let Ok(messages) = protocol::parse_frame_with(&frame, protocol::FrameRules::default()) else {
        return Outcome::Refused;
    };
    let outcome = match room.receive(1, messages) {
        Ok(_) => Outcome::Applied,
        Err(Rejected {
            error: RoomError::Apply(_),
            ..
        }) => Outcome::NotApplied,
        Err(Rejected {
            error: RoomError::Poisoned,
            ..
        }) => panic!("yrs panicked while applying a guarded update"),
    };
    room.join(3, Access::ReadWrite);
    let step1 = protocol::encode_sync_step1(&StateVector::default());
    let messages = protocol::parse_frame(&step1).expect("a SyncStep1 frame parses");
    room.receive(3, messages).expect("a SyncStep1 never fails");
    room.leave(1);
    if let Some((_, frame)) = room.take_awareness() {
        assert!(
            holds_awareness,
            "awareness held by a room that does not hold it"
        );
        protocol::parse_frame(&frame).expect("a held awareness message parses");
    }
    outcome
}

/// Target `decode_apply_update`: an update through the guard, decoded and
/// applied to a document with content. Updates that create subdocuments
/// are refused, as the server refuses them by default (see
/// [`frame_into_room`]).
pub fn decode_apply_update(data: &[u8]) -> Outcome {
    match decode_guard::check_update_v1(data) {
        Ok(summary) if summary.subdocs == 0 => {}
        _ => return Outcome::Refused,
    }
    let Ok(update) = Update::decode_v1(data) else {
        return Outcome::Refused;
    };
    let doc = OwnedDoc::new(seeded_doc());
    let applied = doc.transact_mut().apply_update(update);
    // Encoding the result must work whatever was applied.
    let txn = doc.transact();
    let state = txn.encode_state_as_update_v1(&StateVector::default());
    let _ = txn.state_vector().encode_v1();
    drop(txn);
    assert!(
        decode_guard::check_update_v1(&state).is_ok(),
        "the guard refuses a state yrs encoded"
    );
    if applied.is_ok() {
        Outcome::Applied
    } else {
        Outcome::NotApplied
    }
}

/// Target `convergence`: an edit script read from `data`, run by three
/// clients through a room (see [`Sim`]); every replica must end identical.
pub fn convergence(data: &[u8]) {
    let mut source = Source::new(data);
    let mut sim = Sim::new(3);
    let mut steps = 0;
    while !source.is_empty() && steps < 128 {
        let step = Step::read(&mut source, sim.clients.len());
        sim.step(step);
        steps += 1;
    }
    sim.settle();
    sim.assert_converged();
}

/// Reads choices from fuzzer bytes; past the end every read is zero, so any
/// input is a valid script.
pub struct Source<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Source<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let wide = u16::from_le_bytes([self.byte(), self.byte()]);
        usize::from(wide) % n
    }
}

/// One step of a convergence script.
#[derive(Debug, Clone)]
pub enum Step {
    /// A client edits its document (online or not).
    Edit { client: usize, edit: Edit },
    /// A client sends its queued updates, in one frame or one per frame.
    Send { client: usize, one_frame: bool },
    /// A client applies one frame the room sent it, picked out of order;
    /// with `keep` it stays queued and arrives again later.
    Deliver {
        client: usize,
        pick: usize,
        keep: bool,
    },
    /// A client connects (SyncStep1 both ways) or disconnects (its queues
    /// are lost, as on a real socket).
    Toggle { client: usize },
    /// A client's whole state reaches the room from elsewhere (HTTP import,
    /// another node): `Room::apply_external`.
    External { client: usize },
    /// A client asks the room for what it misses (SyncStep1).
    Resync { client: usize },
}

/// An edit on one of the shared types every replica has.
#[derive(Debug, Clone)]
pub enum Edit {
    TextInsert {
        at: usize,
        text: String,
    },
    TextDelete {
        at: usize,
        len: usize,
    },
    TextFormat {
        at: usize,
        len: usize,
        key: u8,
        on: bool,
    },
    TextEmbed {
        at: usize,
        value: i64,
    },
    MapSet {
        key: u8,
        value: Value,
    },
    MapRemove {
        key: u8,
    },
    ArrayInsert {
        at: usize,
        value: Value,
    },
    ArrayDelete {
        at: usize,
        len: usize,
    },
    /// An edit inside the nested map `m.nested` or the first map in `a`.
    Nested {
        in_array: bool,
        key: u8,
        value: Value,
    },
    XmlInsert {
        at: usize,
        element: bool,
    },
    XmlTextPush {
        text: String,
    },
}

/// Values edits write: plain JSON-like values and nested shared types.
#[derive(Debug, Clone)]
pub enum Value {
    Number(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    List(Vec<i64>),
    Buffer(Vec<u8>),
    NestedMap,
    NestedArray,
    NestedText(String),
}

const WORDS: [&str; 8] = ["a", "bc", "déf", "😀", "ghij", " ", "\n", "xyz"];

impl Step {
    pub fn read(s: &mut Source<'_>, clients: usize) -> Self {
        let client = s.below(clients);
        match s.byte() % 8 {
            0..=2 => Step::Edit {
                client,
                edit: Edit::read(s),
            },
            3 => Step::Send {
                client,
                one_frame: s.byte().is_multiple_of(2),
            },
            4 => Step::Deliver {
                client,
                pick: s.below(64),
                keep: s.byte().is_multiple_of(4),
            },
            5 => Step::Toggle { client },
            6 => Step::External { client },
            _ => Step::Resync { client },
        }
    }
}

impl Edit {
    pub fn read(s: &mut Source<'_>) -> Self {
        let at = s.below(64);
        let len = 1 + s.below(8);
        match s.byte() % 11 {
            0 | 1 => Edit::TextInsert { at, text: words(s) },
            2 => Edit::TextDelete { at, len },
            3 => Edit::TextFormat {
                at,
                len,
                key: s.byte() % 3,
                on: !s.byte().is_multiple_of(3),
            },
            4 => Edit::TextEmbed {
                at,
                value: i64::from(s.byte()),
            },
            5 => Edit::MapSet {
                key: s.byte() % 4,
                value: Value::read(s),
            },
            6 => Edit::MapRemove { key: s.byte() % 4 },
            7 => Edit::ArrayInsert {
                at,
                value: Value::read(s),
            },
            8 => Edit::ArrayDelete { at, len },
            9 => Edit::Nested {
                in_array: s.byte().is_multiple_of(2),
                key: s.byte() % 4,
                value: Value::read(s),
            },
            _ => {
                if s.byte().is_multiple_of(2) {
                    Edit::XmlInsert {
                        at,
                        element: s.byte().is_multiple_of(2),
                    }
                } else {
                    Edit::XmlTextPush { text: words(s) }
                }
            }
        }
    }
}

impl Value {
    pub fn read(s: &mut Source<'_>) -> Self {
        let b = s.byte();
        match b % 10 {
            0 => Value::Number(i64::from(s.byte()) - 100),
            1 => Value::Float(f64::from(s.byte()) / 7.0),
            2 => Value::Str(words(s)),
            3 => Value::Bool(b > 127),
            4 => Value::Null,
            5 => Value::List((0..s.below(4)).map(|i| i as i64).collect()),
            6 => Value::Buffer(vec![s.byte(); s.below(4)]),
            7 => Value::NestedMap,
            8 => Value::NestedArray,
            _ => Value::NestedText(words(s)),
        }
    }
}

fn words(s: &mut Source<'_>) -> String {
    (0..1 + s.below(3))
        .map(|_| WORDS[s.below(WORDS.len())])
        .collect()
}

fn bold() -> yrs::types::Attrs {
    yrs::types::Attrs::from([(Arc::from("bold"), Any::Bool(true))])
}

/// A client of the simulated room.
struct SimClient {
    doc: Doc,
    peer: PeerId,
    online: bool,
    /// Updates of local edits not yet sent.
    outbox: Vec<Vec<u8>>,
    /// Frames the room sent, not yet applied.
    inbox: Vec<Bytes>,
    /// Updates waiting for what they build on. A Yjs client keeps these
    /// sound; yrs's own pending state does not (see `room::held`).
    held: HeldUpdates,
}

/// A room and its clients, without sockets: frames travel through the same
/// `parse_frame` → `Room::receive` path as in the server, and the room's
/// frames reach clients in any order, possibly twice.
pub struct Sim {
    room: Room,
    clients: Vec<SimClient>,
}

impl Sim {
    pub fn new(clients: usize) -> Self {
        let clients = (0..clients)
            .map(|i| SimClient {
                // These clients never send what a remote change makes them
                // clean up (a Yjs client sends it as an edit of its own),
                // so they must not clean up either.
                doc: Doc::with_options(yrs::Options {
                    cleanup_formatting: false,
                    ..yrs::Options::with_client_id(ClientID::new(100 + i as u64))
                }),
                peer: i as PeerId + 1,
                online: false,
                outbox: Vec::new(),
                inbox: Vec::new(),
                held: HeldUpdates::default(),
            })
            .collect();
        Self {
            room: Room::new(crate::room::core::server_doc()),
            clients,
        }
    }

    pub fn step(&mut self, step: Step) {
        match step {
            Step::Edit { client, edit } => {
                let c = &mut self.clients[client];
                let update = apply_edit(&c.doc, &edit);
                if c.online {
                    c.outbox.push(update);
                }
            }
            Step::Send { client, one_frame } => self.send(client, one_frame),
            Step::Deliver { client, pick, keep } => {
                let inbox = &mut self.clients[client].inbox;
                if !inbox.is_empty() {
                    let i = pick % inbox.len();
                    let frame = if keep {
                        inbox[i].clone()
                    } else {
                        inbox.remove(i)
                    };
                    self.client_receives(client, &frame);
                }
            }
            Step::Toggle { client } => {
                if self.clients[client].online {
                    self.disconnect(client);
                } else {
                    self.connect(client);
                }
            }
            Step::External { client } => {
                let state = self.clients[client]
                    .doc
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                decode_guard::check_update_v1(&state).expect("the guard accepts a yrs state");
                let update = DocUpdate {
                    update: Update::decode_v1(&state).expect("a yrs state decodes"),
                    encoded: Bytes::from(state),
                };
                let effects = self
                    .room
                    .apply_external(update)
                    .expect("a yrs state applies");
                self.fan_out(None, effects);
            }
            Step::Resync { client } => {
                if self.clients[client].online {
                    let sv = self.clients[client].doc.transact().state_vector();
                    self.room_receives(client, protocol::encode_sync_step1(&sv));
                }
            }
        }
    }

    fn connect(&mut self, client: usize) {
        let peer = self.clients[client].peer;
        self.clients[client].online = true;
        let greeting = self.room.join(peer, Access::ReadWrite);
        self.clients[client].inbox.extend(greeting);
        // y-websocket sends its SyncStep1 right after connecting.
        let sv = self.clients[client].doc.transact().state_vector();
        self.room_receives(client, protocol::encode_sync_step1(&sv));
    }

    fn disconnect(&mut self, client: usize) {
        let c = &mut self.clients[client];
        c.online = false;
        c.outbox.clear();
        c.inbox.clear();
        let effects = self.room.leave(c.peer);
        self.fan_out(Some(client), effects);
    }

    fn send(&mut self, client: usize, one_frame: bool) {
        let updates = std::mem::take(&mut self.clients[client].outbox);
        if updates.is_empty() || !self.clients[client].online {
            return;
        }
        if one_frame {
            let mut frame = Vec::new();
            for update in &updates {
                frame.extend_from_slice(&protocol::encode_update(update));
            }
            self.room_receives(client, Bytes::from(frame));
        } else {
            for update in &updates {
                self.room_receives(client, protocol::encode_update(update));
            }
        }
    }

    /// A frame from `client` reaches the room as it would over a socket.
    fn room_receives(&mut self, client: usize, frame: Bytes) {
        let peer = self.clients[client].peer;
        let messages = protocol::parse_frame(&frame).expect("a client frame parses");
        let effects = self
            .room
            .receive(peer, messages)
            .expect("the room applies a client's update");
        self.fan_out(Some(client), effects);
    }

    fn fan_out(&mut self, sender: Option<usize>, effects: Effects) {
        if let Some(sender) = sender {
            self.clients[sender].inbox.extend(effects.to_sender);
        }
        for (i, c) in self.clients.iter_mut().enumerate() {
            if Some(i) != sender && c.online {
                c.inbox.extend(effects.to_others.iter().cloned());
            }
        }
    }

    /// A frame from the room reaches `client`, which answers a SyncStep1
    /// with a SyncStep2 as y-websocket does.
    fn client_receives(&mut self, client: usize, frame: &Bytes) {
        use yrs::sync::{Message, MessageReader, SyncMessage};
        let mut decoder = DecoderV1::from(frame.as_ref());
        let messages: Vec<Message> = MessageReader::new(&mut decoder)
            .collect::<Result<_, _>>()
            .expect("a room frame decodes");
        for message in messages {
            match message {
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let diff = self.clients[client]
                        .doc
                        .transact()
                        .encode_state_as_update_v1(&sv);
                    let answer = protocol::encode_sync_step2(&diff);
                    if self.clients[client].online {
                        self.room_receives(client, answer);
                    }
                }
                Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => {
                    let update = Update::decode_v1(&u).expect("a room update decodes");
                    let c = &mut self.clients[client];
                    c.held
                        .apply(&c.doc, update, &Bytes::from(u))
                        .expect("a room update applies");
                }
                _ => {}
            }
        }
    }

    /// Connects everyone and delivers everything until nothing moves.
    pub fn settle(&mut self) {
        for client in 0..self.clients.len() {
            if !self.clients[client].online {
                self.connect(client);
            }
        }
        for _ in 0..64 {
            let mut moved = false;
            for client in 0..self.clients.len() {
                if !self.clients[client].outbox.is_empty() {
                    self.send(client, false);
                    moved = true;
                }
                while !self.clients[client].inbox.is_empty() {
                    let frame = self.clients[client].inbox.remove(0);
                    self.client_receives(client, &frame);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    /// Every client and the room hold the same document.
    ///
    /// # Panics
    /// When two replicas differ.
    pub fn assert_converged(&self) {
        let expected = Snapshot::of(self.room.doc());
        for (i, c) in self.clients.iter().enumerate() {
            let got = Snapshot::of(&c.doc);
            assert_eq!(got, expected, "client {i} differs from the room");
        }
    }

    /// The room's document, for tests.
    pub fn room_doc(&self) -> &Doc {
        self.room.doc()
    }
}

/// What replicas must agree on.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    state_vector: StateVector,
    text: String,
    text_diff: Vec<yrs::types::text::Diff<YChange>>,
    map: Any,
    array: Any,
    xml: String,
}

impl Snapshot {
    pub fn of(doc: &Doc) -> Self {
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        let array = doc.get_or_insert_array("a");
        let xml = doc.get_or_insert_xml_fragment("x");
        let txn = doc.transact();
        Self {
            state_vector: txn.state_vector(),
            text: text.get_string(&txn),
            text_diff: text.diff(&txn, YChange::identity),
            map: map.to_json(&txn),
            array: array.to_json(&txn),
            xml: xml.get_string(&txn),
        }
    }
}

/// Applies `edit` to `doc` in one transaction and returns the update it
/// made (encoded before the commit squashes it, as a yrs client may send).
pub fn apply_edit(doc: &Doc, edit: &Edit) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    let xml = doc.get_or_insert_xml_fragment("x");
    let mut txn = doc.transact_mut();
    match edit {
        Edit::TextInsert { at, text: s } => {
            let at = char_boundary(&text, &txn, *at);
            text.insert(&mut txn, at, s);
        }
        Edit::TextDelete { at, len } => {
            let (from, to) = char_range(&text, &txn, *at, *len);
            if to > from {
                text.remove_range(&mut txn, from, to - from);
            }
        }
        Edit::TextFormat { at, len, key, on } => {
            let (from, to) = char_range(&text, &txn, *at, *len);
            let name = ["bold", "italic", "color"][usize::from(*key)];
            let value = if *on {
                match key {
                    2 => Any::from("red"),
                    _ => Any::Bool(true),
                }
            } else {
                Any::Null
            };
            if to > from {
                text.format(
                    &mut txn,
                    from,
                    to - from,
                    yrs::types::Attrs::from([(Arc::from(name), value)]),
                );
            }
        }
        Edit::TextEmbed { at, value } => {
            let at = char_boundary(&text, &txn, *at);
            text.insert_embed(&mut txn, at, Any::from(*value));
        }
        Edit::MapSet { key, value } => insert_into_map(&map, &mut txn, *key, value),
        Edit::MapRemove { key } => {
            map.remove(&mut txn, &key_name(*key));
        }
        Edit::ArrayInsert { at, value } => {
            let at = (*at as u32).min(array.len(&txn));
            insert_into_array(&array, &mut txn, at, value);
        }
        Edit::ArrayDelete { at, len } => {
            let n = array.len(&txn);
            let from = (*at as u32).min(n);
            let len = (*len as u32).min(n - from);
            if len > 0 {
                array.remove_range(&mut txn, from, len);
            }
        }
        Edit::Nested {
            in_array,
            key,
            value,
        } => {
            let target = if *in_array {
                array.iter(&txn).find_map(|v| match v {
                    Out::YMap(m) => Some(m),
                    _ => None,
                })
            } else {
                match map.get(&txn, "nested") {
                    Some(Out::YMap(m)) => Some(m),
                    _ => None,
                }
            };
            match target {
                Some(nested) => insert_into_map(&nested, &mut txn, *key, value),
                None => {
                    map.insert(&mut txn, "nested", MapPrelim::default());
                }
            }
        }
        Edit::XmlInsert { at, element } => {
            let at = (*at as u32).min(xml.len(&txn));
            if *element {
                xml.insert(&mut txn, at, XmlElementPrelim::empty("p"));
            } else {
                xml.insert(&mut txn, at, XmlTextPrelim::new("x"));
            }
        }
        Edit::XmlTextPush { text: s } => {
            let first_text = (0..xml.len(&txn)).find_map(|i| match xml.get(&txn, i) {
                Some(yrs::XmlOut::Text(t)) => Some(t),
                _ => None,
            });
            match first_text {
                Some(t) => t.push(&mut txn, s),
                None => {
                    xml.push_back(&mut txn, XmlTextPrelim::new(s.as_str()));
                }
            }
        }
    }
    txn.encode_update_v1()
}

fn key_name(key: u8) -> String {
    format!("k{key}")
}

fn insert_into_map(map: &MapRef, txn: &mut TransactionMut, key: u8, value: &Value) {
    let key = key_name(key);
    match value {
        Value::NestedMap => {
            map.insert(txn, key, MapPrelim::default());
        }
        Value::NestedArray => {
            map.insert(txn, key, ArrayPrelim::default());
        }
        Value::NestedText(s) => {
            map.insert(txn, key, TextPrelim::new(s.as_str()));
        }
        plain => {
            map.insert(txn, key, plain_any(plain));
        }
    }
}

fn insert_into_array(array: &ArrayRef, txn: &mut TransactionMut, at: u32, value: &Value) {
    match value {
        Value::NestedMap => {
            array.insert(txn, at, MapPrelim::default());
        }
        Value::NestedArray => {
            array.insert(txn, at, ArrayPrelim::default());
        }
        Value::NestedText(s) => {
            array.insert(txn, at, TextPrelim::new(s.as_str()));
        }
        plain => {
            array.insert(txn, at, plain_any(plain));
        }
    }
}

fn plain_any(value: &Value) -> Any {
    match value {
        Value::Number(n) => Any::from(*n),
        Value::Float(f) => Any::from(*f),
        Value::Str(s) => Any::from(s.as_str()),
        Value::Bool(b) => Any::Bool(*b),
        Value::List(items) => Any::from(items.iter().map(|&i| Any::from(i)).collect::<Vec<_>>()),
        Value::Buffer(bytes) => Any::from(bytes.clone()),
        Value::Null | Value::NestedMap | Value::NestedArray | Value::NestedText(_) => Any::Null,
    }
}

/// The `n`-th position between characters of `text` (clamped to its end),
/// in yrs's default offset unit: UTF-8 bytes for text, 1 for an embed.
fn char_boundary(text: &TextRef, txn: &TransactionMut, n: usize) -> u32 {
    let mut offset = 0u32;
    let mut seen = 0;
    for chunk in text.diff(txn, YChange::identity) {
        let units: Vec<u32> = match &chunk.insert {
            Out::Any(Any::String(s)) => s.chars().map(|c| c.len_utf8() as u32).collect(),
            _ => vec![1],
        };
        for unit in units {
            if seen == n {
                return offset;
            }
            offset += unit;
            seen += 1;
        }
    }
    offset
}

fn char_range(text: &TextRef, txn: &TransactionMut, at: usize, len: usize) -> (u32, u32) {
    (
        char_boundary(text, txn, at),
        char_boundary(text, txn, at + len),
    )
}
