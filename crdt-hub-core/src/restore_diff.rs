//! Restoring a document to an earlier version, as a CRDT edit.
//!
//! Replacing a room's stored bytes with an old snapshot does not roll a
//! Yjs document back: every connected client still holds the newer items
//! and sends them again on its next sync. A restore must instead be a *new*
//! update on top of the current state, one that deletes what came later and
//! re-inserts what was deleted since, so that every replica that applies it
//! (in any order with its own concurrent edits) shows the version's content.
//!
//! [`restore_update`] computes that update by comparing content, type by
//! type, from the roots down:
//!
//! - **maps** (Y.Map, and the attributes of XML elements and XML text):
//!   keys missing from the version are removed, differing values are set;
//!   nested shared types of the same kind are restored in place;
//! - **sequences** (Y.Array, Y.XmlFragment, the children of Y.XmlElement):
//!   a Myers diff of the elements (values by equality, shared types by their
//!   Yjs item id, so an element that survived is kept and restored in place;
//!   within replaced runs, shared types of the same kind are paired and
//!   restored in place too, so restoring twice changes nothing the second
//!   time);
//! - **text** (Y.Text, Y.XmlText): a Myers diff of characters and embeds;
//!   deleted and inserted runs become deletes and inserts with the version's
//!   formatting, and kept runs whose formatting differs are re-formatted.
//!
//! Nothing is replaced that need not be, so a client's concurrent edit next
//! to restored content survives the merge. Root types a server has never
//! declared ("undefined" to yrs) have their kind inferred from their content
//! on either side, the way [`crate::doc_json`] does. A root type cannot be
//! removed from a Yjs document: a root the version did not have is emptied.

mod collections;
mod text;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use similar::{Algorithm, DiffOp};
use yrs::branch::{Branch, BranchPtr};
use yrs::types::TypeRef;
use yrs::types::text::YChange;
use yrs::types::xml::{XmlElementPrelim, XmlFragmentPrelim, XmlTextPrelim};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, BranchID, ClientID, Doc, Map, MapPrelim, MapRef, OffsetKind,
    Options, Out, ReadTxn, StateVector, Text, TextPrelim, TextRef, Transact, TransactionMut,
    Update, WriteTxn,
};

/// Longest one sequence diff may search for a minimal edit script before
/// settling for a coarser (still correct) one.
const DIFF_DEADLINE: Duration = Duration::from_millis(500);

/// Why a restore update could not be computed. Nothing is changed then.
#[derive(Debug, thiserror::Error)]
pub enum RestoreDiffError {
    /// The current document could not be copied (it does not re-encode).
    #[error("the current document could not be copied: {0}")]
    Copy(String),
    /// A shared type this function cannot rebuild (a weak link, or a
    /// nested type of unknown kind).
    #[error("the version contains {0}, which cannot be restored")]
    Unsupported(&'static str),
    /// yrs panicked while the edits were made (a bug; nothing is applied).
    #[error("computing the restore failed inside yrs")]
    Panicked,
}

/// The update that makes `current`'s content equal to `target`'s, or
/// `None` when they already are equal.
///
/// The update is computed on a private copy of `current` under a fresh
/// client id; neither document is changed. Applied to `current` (or to any
/// replica that contains `current`'s state), it makes every top-level type
/// show `target`'s content: text with its formatting and embeds, maps,
/// arrays, nested types and XML. Edits a replica made concurrently are
/// merged, not erased.
///
/// # Errors
/// [`RestoreDiffError`] when the documents hold something that cannot be
/// rebuilt, or yrs fails.
pub fn restore_update(current: &Doc, target: &Doc) -> Result<Option<Vec<u8>>, RestoreDiffError> {
    catch_unwind(AssertUnwindSafe(|| compute(current, target)))
        .unwrap_or(Err(RestoreDiffError::Panicked))
}

fn compute(current: &Doc, target: &Doc) -> Result<Option<Vec<u8>>, RestoreDiffError> {
    let (state, current_sv) = {
        let txn = current.transact();
        (
            txn.encode_state_as_update_v1(&StateVector::default()),
            txn.state_vector(),
        )
    };
    let target_txn = target.transact();
    // Released when done: a copy holding a subdocument would leak.
    let scratch = crate::subdocs::OwnedDoc::new(Doc::with_options(Options {
        client_id: fresh_client_id(&current_sv, &target_txn.state_vector()),
        offset_kind: OffsetKind::Utf16,
        skip_gc: true,
        ..Options::default()
    }));
    let update = Update::decode_v1(&state).map_err(|e| RestoreDiffError::Copy(e.to_string()))?;
    scratch
        .transact_mut()
        .apply_update(update)
        .map_err(|e| RestoreDiffError::Copy(e.to_string()))?;
    // A transaction of its own: the update is what this one changes.
    let mut txn = scratch.transact_mut();
    let before = txn.state_vector();

    let restorer = Restorer {
        target: &target_txn,
        deadline: DIFF_DEADLINE,
    };
    restorer.restore_roots(&mut txn)?;

    let changed = txn.state_vector() != before || !txn.delete_set().is_empty();
    Ok(changed.then(|| txn.encode_update_v1()))
}

/// A client id that neither document has used: the restore's items must
/// not collide with anyone's.
fn fresh_client_id(a: &StateVector, b: &StateVector) -> ClientID {
    loop {
        let id = ClientID::random();
        if a.get(&id) == 0 && b.get(&id) == 0 {
            return id;
        }
    }
}

/// How a branch's indexed part is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    /// Characters, embeds and formatting (Y.Text, Y.XmlText).
    Text,
    /// Elements (Y.Array, Y.XmlFragment, Y.XmlElement children).
    Array,
    /// No indexed part (Y.Map).
    None,
}

/// The kind of a nested shared type, enough to create an empty one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    Text,
    Array,
    Map,
    XmlElement(Arc<str>),
    XmlFragment,
    XmlText,
}

impl Kind {
    fn of(value: &Out) -> Option<(Kind, BranchPtr)> {
        let (kind, branch): (Kind, &Branch) = match value {
            Out::YText(r) => (Kind::Text, r.as_ref()),
            Out::YArray(r) => (Kind::Array, r.as_ref()),
            Out::YMap(r) => (Kind::Map, r.as_ref()),
            Out::YXmlElement(r) => (Kind::XmlElement(r.tag().clone()), r.as_ref()),
            Out::YXmlFragment(r) => (Kind::XmlFragment, r.as_ref()),
            Out::YXmlText(r) => (Kind::XmlText, r.as_ref()),
            _ => return None,
        };
        Some((kind, BranchPtr::from(branch)))
    }

    fn list_kind(&self) -> ListKind {
        match self {
            Kind::Text | Kind::XmlText => ListKind::Text,
            Kind::Array | Kind::XmlElement(_) | Kind::XmlFragment => ListKind::Array,
            Kind::Map => ListKind::None,
        }
    }
}

/// What a sequence or text diff compares: values by equality, shared types
/// by identity (their Yjs item id), subdocuments by guid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Char(char),
    Value(AnyKey),
    Shared(BranchID),
    /// A shared type by kind only (the second, looser diff).
    Like(Kind),
    Doc(String),
}

impl Key {
    fn of(value: &Out) -> Result<Key, RestoreDiffError> {
        Ok(match value {
            Out::Any(any) => Key::Value(AnyKey(any.clone())),
            Out::YDoc(doc) => Key::Doc(doc.guid().to_string()),
            other => match Kind::of(other) {
                Some((_, branch)) => Key::Shared(branch.id()),
                None => {
                    return Err(RestoreDiffError::Unsupported(
                        "a shared type of unknown kind",
                    ));
                }
            },
        })
    }
}

/// An [`Any`] usable as a hash key. Equality is `Any`'s own; the hash
/// ignores map order, so equal maps hash alike.
#[derive(Debug, Clone, PartialEq)]
struct AnyKey(Any);

impl Eq for AnyKey {}

impl Hash for AnyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_any(&self.0, state);
    }
}

fn hash_any<H: Hasher>(any: &Any, state: &mut H) {
    std::mem::discriminant(any).hash(state);
    match any {
        Any::Null | Any::Undefined => {}
        Any::Bool(b) => b.hash(state),
        Any::Number(n) => match n {
            yrs::any::Number::Int(i) => i.hash(state),
            yrs::any::Number::Float(f) => f.to_bits().hash(state),
        },
        Any::String(s) => s.hash(state),
        Any::Buffer(b) => b.hash(state),
        Any::Array(items) => {
            items.len().hash(state);
            for item in items.iter() {
                hash_any(item, state);
            }
        }
        Any::Map(entries) => {
            // Order-independent: combine the entries' own hashes.
            let mut combined = 0u64;
            for (key, value) in entries.iter() {
                let mut entry = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut entry);
                hash_any(value, &mut entry);
                combined = combined.wrapping_add(entry.finish());
            }
            entries.len().hash(state);
            combined.hash(state);
        }
    }
}

/// Walks the current document (inside the scratch transaction) and the
/// target (read-only) side by side, editing the former.
struct Restorer<'t, T: ReadTxn> {
    target: &'t T,
    deadline: Duration,
}

impl<T: ReadTxn> Restorer<'_, T> {
    fn restore_roots(&self, txn: &mut TransactionMut) -> Result<(), RestoreDiffError> {
        let mut current: Vec<(String, BranchPtr)> = txn
            .root_refs()
            .filter_map(|(name, value)| Some((name.to_string(), branch_of(&value)?)))
            .collect();
        let mut target: HashMap<String, BranchPtr> = self
            .target
            .root_refs()
            .filter_map(|(name, value)| Some((name.to_string(), branch_of(&value)?)))
            .collect();
        current.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, branch) in &current {
            let tgt = target.remove(name);
            let kind = self.root_list_kind(txn, *branch, tgt)?;
            self.restore_branch(txn, *branch, tgt, kind)?;
        }
        // Roots only the version has: create them, then fill them.
        let mut missing: Vec<(String, BranchPtr)> = target.into_iter().collect();
        missing.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, tgt) in missing {
            let kind = self.root_list_kind(txn, tgt, Some(tgt))?;
            let created = match kind {
                ListKind::Text => branch_ptr(&txn.get_or_insert_text(name.as_str())),
                ListKind::Array => branch_ptr(&txn.get_or_insert_array(name.as_str())),
                ListKind::None if MapRef::from(tgt).len(self.target) > 0 => {
                    branch_ptr(&txn.get_or_insert_map(name.as_str()))
                }
                ListKind::None => continue, // empty: nothing to restore
            };
            self.restore_branch(txn, created, Some(tgt), kind)?;
        }
        Ok(())
    }

    /// How a root's sequence part is edited: from its declared type on
    /// either side, else inferred from content (text if either side holds
    /// characters or embeds, a sequence if either holds elements).
    fn root_list_kind(
        &self,
        txn: &TransactionMut,
        cur: BranchPtr,
        tgt: Option<BranchPtr>,
    ) -> Result<ListKind, RestoreDiffError> {
        for type_ref in [Some(cur.type_ref()), tgt.as_ref().map(|t| t.type_ref())]
            .into_iter()
            .flatten()
        {
            if let Some(kind) = declared_list_kind(type_ref)? {
                return Ok(kind);
            }
        }
        let cur_is_text = is_text_like(txn, cur);
        let tgt_is_text = tgt.is_some_and(|t| is_text_like(self.target, t));
        Ok(if cur_is_text || tgt_is_text {
            ListKind::Text
        } else if cur.len() > 0 || tgt.is_some_and(|t| t.len() > 0) {
            ListKind::Array
        } else {
            ListKind::None
        })
    }

    /// Makes `cur` show `tgt`'s content (`None`: empty).
    fn restore_branch(
        &self,
        txn: &mut TransactionMut,
        cur: BranchPtr,
        tgt: Option<BranchPtr>,
        kind: ListKind,
    ) -> Result<(), RestoreDiffError> {
        self.restore_map(txn, cur, tgt)?;
        match kind {
            ListKind::Text => self.restore_text(txn, cur, tgt),
            ListKind::Array => self.restore_array(txn, cur, tgt),
            ListKind::None => Ok(()),
        }
    }

    /// Restores a shared type kept by a diff (same item id on both sides).
    fn restore_same(
        &self,
        txn: &mut TransactionMut,
        cur: &Out,
        tgt: &Out,
    ) -> Result<(), RestoreDiffError> {
        if let (Some((kind, cur_branch)), Some((_, tgt_branch))) = (Kind::of(cur), Kind::of(tgt)) {
            self.restore_branch(txn, cur_branch, Some(tgt_branch), kind.list_kind())?;
        }
        Ok(())
    }

    /// Puts a copy of the version's `value` at `place`: plain values as
    /// they are, shared types created empty and then restored.
    fn insert_value(
        &self,
        txn: &mut TransactionMut,
        place: Place<'_>,
        value: &Out,
    ) -> Result<(), RestoreDiffError> {
        if let Out::Any(any) = value {
            place.insert_any(txn, any.clone());
            return Ok(());
        }
        if let Out::YDoc(doc) = value {
            let copy = Doc::with_options(Options {
                guid: doc.guid(),
                ..Options::default()
            });
            return place.insert_doc(txn, copy);
        }
        let (kind, tgt_branch) = Kind::of(value).ok_or(RestoreDiffError::Unsupported(
            "a shared type of unknown kind",
        ))?;
        let created = match &kind {
            Kind::Text => place.insert_shared(txn, TextPrelim::new("")),
            Kind::Array => place.insert_shared(txn, ArrayPrelim::default()),
            Kind::Map => place.insert_shared(txn, MapPrelim::default()),
            Kind::XmlElement(tag) => place.insert_shared(txn, XmlElementPrelim::empty(tag.clone())),
            Kind::XmlFragment => place.insert_shared(txn, XmlFragmentPrelim::default()),
            Kind::XmlText => place.insert_shared(txn, XmlTextPrelim::new("")),
        };
        self.restore_branch(txn, created, Some(tgt_branch), kind.list_kind())
    }

    /// A Myers diff with a deadline: past it, a coarser script (still a
    /// correct one) is returned.
    fn diff(&self, old: &[Key], new: &[Key]) -> Vec<DiffOp> {
        similar::capture_diff_slices_deadline(
            Algorithm::Myers,
            old,
            new,
            Some(Instant::now() + self.deadline),
        )
    }
}

/// Where [`Restorer::insert_value`] puts a value.
enum Place<'a> {
    Map(&'a MapRef, &'a str),
    Array(&'a ArrayRef, u32),
    /// A text offset (UTF-16) and the formatting the value gets.
    Text(&'a TextRef, u32, yrs::types::Attrs),
}

impl Place<'_> {
    fn insert_any(self, txn: &mut TransactionMut, any: Any) {
        match self {
            Place::Map(map, key) => {
                map.insert(txn, key, any);
            }
            Place::Array(array, index) => {
                array.insert(txn, index, any);
            }
            Place::Text(text, index, attrs) => {
                text.insert_embed_with_attributes(txn, index, any, attrs);
            }
        }
    }

    fn insert_doc(self, txn: &mut TransactionMut, doc: Doc) -> Result<(), RestoreDiffError> {
        match self {
            Place::Map(map, key) => {
                map.insert(txn, key, doc);
            }
            Place::Array(array, index) => {
                array.insert(txn, index, doc);
            }
            Place::Text(..) => {
                return Err(RestoreDiffError::Unsupported("a subdocument inside text"));
            }
        }
        Ok(())
    }

    fn insert_shared<P>(self, txn: &mut TransactionMut, prelim: P) -> BranchPtr
    where
        P: yrs::block::Prelim + Into<yrs::block::EmbedPrelim<P>>,
        P::Return: AsRef<Branch>,
    {
        let created = match self {
            Place::Map(map, key) => map.insert(txn, key, prelim),
            Place::Array(array, index) => array.insert(txn, index, prelim),
            Place::Text(text, index, attrs) => {
                text.insert_embed_with_attributes(txn, index, prelim, attrs)
            }
        };
        branch_ptr(&created)
    }
}

fn branch_ptr<R: AsRef<Branch>>(shared: &R) -> BranchPtr {
    BranchPtr::from(shared.as_ref())
}

fn branch_of(value: &Out) -> Option<BranchPtr> {
    value.try_branch().map(BranchPtr::from)
}

/// The list kind a declared type implies; `None` for an undefined root.
fn declared_list_kind(type_ref: &TypeRef) -> Result<Option<ListKind>, RestoreDiffError> {
    Ok(Some(match type_ref {
        TypeRef::Text | TypeRef::XmlText => ListKind::Text,
        TypeRef::Array | TypeRef::XmlFragment | TypeRef::XmlElement(_) => ListKind::Array,
        TypeRef::Map | TypeRef::XmlHook => ListKind::None,
        TypeRef::Undefined => return Ok(None),
        TypeRef::SubDoc => return Err(RestoreDiffError::Unsupported("a subdocument root")),
        #[allow(unreachable_patterns)]
        _ => return Err(RestoreDiffError::Unsupported("a weak link")),
    }))
}

/// Whether a branch's visible sequence holds characters or embeds (only
/// text types do; arrays hold plain values, which a text diff skips).
fn is_text_like<T: ReadTxn>(txn: &T, branch: BranchPtr) -> bool {
    TextRef::from(branch)
        .diff(txn, YChange::identity)
        .iter()
        .any(|chunk| matches!(chunk.insert, Out::Any(_)))
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("a Yjs sequence is shorter than 2^32")
}
