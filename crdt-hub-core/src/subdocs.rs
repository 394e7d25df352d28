//! Documents that hold subdocuments, and the policy for them.
//!
//! yrs 0.28.1 never frees a `Doc` whose content holds a subdocument. The
//! item holding it keeps a strong handle to the parent document
//! (`ItemContent::Doc(Some(parent), _)`, set in `Item::integrate_content`),
//! so the parent's store owns a reference to itself. Measured: a document
//! with 200,000 characters of text and one subdocument leaves 202,888 bytes
//! behind when its last handle is dropped; without the subdocument, 0.
//! No public API reaches that field, but deleting the item does: the
//! commit's garbage collection replaces a deleted item's content, which
//! drops both handles. So a document is freed by deleting the items that
//! hold its subdocuments (theirs first) just before it is dropped
//! ([`release`]); [`OwnedDoc`] does that on drop. The deletion is a real
//! edit, so only a document nobody reads, sends or stores again may be
//! released: a room at unload, a copy made for a restore or an export.
//!
//! yrs 0.28.1 also frees a subdocument's item while it still reads it when
//! a *container* holding a subdocument is deleted and collected in one
//! commit (a use-after-free any writer can trigger by deleting the map that
//! holds a subdocument). Releasing deletes the subdocument items
//! themselves, whose items survive collection, so it never takes that path;
//! an update from a client can. Hence the policy: by default a room
//! refuses updates that create subdocuments ([`SubdocPolicy::Refuse`]);
//! `--subdocuments allow` is for deployments whose writers are trusted.

use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};

use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{BranchID, Doc, IdSet, ReadTxn, Transact, Update};

/// Whether updates may create subdocuments (`--subdocuments`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SubdocPolicy {
    /// Updates that create a subdocument are refused (WebSocket: close
    /// 1003; API: 400). Subdocuments already stored still load.
    #[default]
    Refuse,
    /// Updates may create subdocuments. yrs 0.28.1 frees memory it still
    /// uses when a container holding a subdocument is deleted: allow only
    /// when every writer is trusted.
    Allow,
}

impl SubdocPolicy {
    pub fn allows(self) -> bool {
        self == SubdocPolicy::Allow
    }
}

/// Deletes the items holding `doc`'s subdocuments (and, first, those of
/// the subdocuments themselves), so that yrs frees the documents once their
/// last handles are dropped. Returns how many subdocuments it released.
///
/// This edits `doc`: call it only when nothing will read, send or store
/// `doc` again. A document without subdocuments is left untouched, and a
/// document another transaction holds, or whose yrs state panics, is left
/// as it is (it leaks, as before).
pub fn release(doc: &Doc) -> usize {
    catch_unwind(AssertUnwindSafe(|| {
        let released = delete_subdocs(doc);
        if doc.skip_gc() {
            // Such a document (a restore's private copy) collects nothing
            // on commit, so items holding subdocuments stay whole, with
            // their handle on the document, even once deleted (by the
            // deletions above or earlier). Collected in a transaction of
            // its own: one that also removes subdocuments would destroy
            // them after collecting their items (the use-after-free
            // above).
            if let Ok(mut txn) = doc.try_transact_mut() {
                txn.gc(None);
            }
        }
        released
    }))
    .unwrap_or(0)
}

/// Deletes the items holding `doc`'s subdocuments, theirs first.
fn delete_subdocs(doc: &Doc) -> usize {
    let subdocs: Vec<Doc> = match doc.try_transact() {
        Ok(txn) => txn.subdocs().cloned().collect(),
        Err(_) => return 0,
    };
    if subdocs.is_empty() {
        return 0;
    }
    let Ok(mut txn) = doc.try_transact_mut() else {
        return 0;
    };
    let mut released = 0;
    let mut items = IdSet::new();
    for subdoc in &subdocs {
        released += delete_subdocs(subdoc);
        // The item holding a subdocument has length 1.
        if let Some(BranchID::Nested(id)) = subdoc.branch_id() {
            items.insert(id, 1);
            released += 1;
        }
    }
    drop(subdocs);
    // An update of no structs and these deletions.
    let mut deletions = vec![0u8];
    deletions.extend(items.encode_v1());
    if let Ok(update) = Update::decode_v1(&deletions) {
        let _ = txn.apply_update(update);
    }
    released
}

/// A document this process holds alone, [released](release) when dropped:
/// for documents made to be read once (a restore's copies, an export)
/// and dropped.
#[derive(Debug)]
pub struct OwnedDoc(Option<Doc>);

impl OwnedDoc {
    pub fn new(doc: Doc) -> Self {
        Self(Some(doc))
    }

    /// The document, now the caller's to release (a room does on drop).
    pub fn into_inner(mut self) -> Doc {
        self.0.take().expect("present until taken")
    }
}

impl Deref for OwnedDoc {
    type Target = Doc;

    fn deref(&self) -> &Doc {
        self.0.as_ref().expect("present until taken")
    }
}

impl Drop for OwnedDoc {
    fn drop(&mut self) {
        if let Some(doc) = &self.0 {
            release(doc);
        }
    }
}

#[cfg(test)]
mod tests {
    use yrs::{GetString, Map, MapPrelim, MapRef, StateVector, Text, WriteTxn};

    use super::*;

    /// A state with text and, as asked, a subdocument at `m.sub` or
    /// nested at `m.nested.sub`.
    pub fn state(subdoc: Option<&str>) -> Vec<u8> {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "some text");
        match subdoc {
            Some("top") => {
                map.insert(&mut txn, "sub", Doc::new());
            }
            Some(_) => {
                let nested: MapRef = map.insert(&mut txn, "nested", MapPrelim::default());
                nested.insert(&mut txn, "sub", Doc::new());
            }
            None => {}
        }
        let state = txn.encode_state_as_update_v1(&StateVector::default());
        drop(txn);
        release(&doc);
        state
    }

    fn loaded(state: &[u8]) -> Doc {
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(state).unwrap())
            .unwrap();
        doc
    }

    #[test]
    fn release_deletes_the_subdocument_items_and_nothing_else() {
        for shape in ["top", "nested"] {
            let doc = loaded(&state(Some(shape)));
            assert_eq!(doc.transact().subdocs().count(), 1);
            assert_eq!(release(&doc), 1, "{shape}");
            assert_eq!(doc.transact().subdocs().count(), 0);
            let text = doc.get_or_insert_text("t");
            assert_eq!(text.get_string(&doc.transact()), "some text");
            let map = doc.transact_mut().get_or_insert_map("m");
            assert!(map.get(&doc.transact(), "sub").is_none());
        }
    }

    #[test]
    fn a_document_without_subdocuments_is_left_alone() {
        let plain = loaded(&state(None));
        let before = plain.transact().state_vector();
        assert_eq!(release(&plain), 0);
        assert_eq!(plain.transact().state_vector(), before);
        let snapshot = plain.transact().snapshot();
        assert!(snapshot.delete_set.is_empty());
    }

    #[test]
    fn a_document_in_a_transaction_is_left_alone() {
        let doc = loaded(&state(Some("top")));
        let txn = doc.transact();
        assert_eq!(release(&doc), 0);
        drop(txn);
        let owned = OwnedDoc::new(doc);
        assert_eq!(owned.transact().subdocs().count(), 1);
        let doc = owned.into_inner();
        assert_eq!(
            doc.transact().subdocs().count(),
            1,
            "into_inner releases nothing"
        );
    }
}
