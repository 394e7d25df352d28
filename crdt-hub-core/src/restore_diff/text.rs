//! Restoring Y.Text and Y.XmlText: characters, embeds and formatting.
//!
//! Both texts are flattened into units (one per character or embed), each
//! pointing at the formatted chunk it came from. A Myers diff of the units
//! (formatting aside) says what to keep, delete and insert; kept runs whose
//! formatting differs are re-formatted, inserted runs get the version's
//! formatting explicitly (never the neighbours' by inheritance).

use yrs::branch::BranchPtr;
use yrs::types::Attrs;
use yrs::types::text::{Diff, YChange};
use yrs::{Any, Out, ReadTxn, Text, TextRef, TransactionMut};

use super::{Key, Place, RestoreDiffError, Restorer, len_u32};

/// A text as a flat sequence of units.
struct Units {
    keys: Vec<Key>,
    /// For each unit, the index of its chunk in `chunks`.
    chunk_of: Vec<usize>,
    chunks: Vec<Diff<YChange>>,
}

impl Units {
    fn of<T: ReadTxn>(txn: &T, branch: Option<BranchPtr>) -> Result<Self, RestoreDiffError> {
        let chunks = match branch {
            Some(branch) => TextRef::from(branch).diff(txn, YChange::identity),
            None => Vec::new(),
        };
        let mut keys = Vec::new();
        let mut chunk_of = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            match &chunk.insert {
                Out::Any(Any::String(s)) => {
                    for c in s.chars() {
                        keys.push(Key::Char(c));
                        chunk_of.push(index);
                    }
                }
                other => {
                    keys.push(Key::of(other)?);
                    chunk_of.push(index);
                }
            }
        }
        Ok(Self {
            keys,
            chunk_of,
            chunks,
        })
    }

    fn attrs(&self, unit: usize) -> Option<&Attrs> {
        self.chunks[self.chunk_of[unit]].attributes.as_deref()
    }

    fn value(&self, unit: usize) -> &Out {
        &self.chunks[self.chunk_of[unit]].insert
    }

    /// Length of units `range` in UTF-16 code units (the scratch document's
    /// offset kind); an embed counts one.
    fn width(&self, range: std::ops::Range<usize>) -> u32 {
        self.keys[range].iter().map(unit_width).sum()
    }
}

fn unit_width(key: &Key) -> u32 {
    match key {
        Key::Char(c) => len_u32(c.len_utf16()),
        _ => 1,
    }
}

impl<T: ReadTxn> Restorer<'_, T> {
    pub(super) fn restore_text(
        &self,
        txn: &mut TransactionMut,
        cur: BranchPtr,
        tgt: Option<BranchPtr>,
    ) -> Result<(), RestoreDiffError> {
        let current = Units::of(txn, Some(cur))?;
        let wanted = Units::of(self.target, tgt)?;
        if current.keys.is_empty() && wanted.keys.is_empty() {
            return Ok(());
        }
        let text = TextRef::from(cur);
        let mut pos = 0u32;
        for op in self.diff(&current.keys, &wanted.keys) {
            let (old, new) = (op.old_range(), op.new_range());
            if let similar::DiffOp::Equal { .. } = op {
                pos = self.keep(txn, &text, pos, &current, old, &wanted, new)?;
                continue;
            }
            let removed = current.width(old);
            if removed > 0 {
                text.remove_range(txn, pos, removed);
            }
            pos = self.insert(txn, &text, pos, &wanted, new)?;
        }
        merge_split_runs(txn, &text, &current, &wanted)
    }

    /// A run both sides share: re-format where the formatting differs and
    /// restore embedded shared types in place. Returns the offset after it.
    #[allow(clippy::too_many_arguments)]
    fn keep(
        &self,
        txn: &mut TransactionMut,
        text: &TextRef,
        mut pos: u32,
        current: &Units,
        old: std::ops::Range<usize>,
        wanted: &Units,
        new: std::ops::Range<usize>,
    ) -> Result<u32, RestoreDiffError> {
        let len = old.len();
        let mut i = 0;
        while i < len {
            // A segment: one chunk on each side, so one formatting pair.
            let (cur_chunk, tgt_chunk) = (
                current.chunk_of[old.start + i],
                wanted.chunk_of[new.start + i],
            );
            let mut j = i;
            while j < len
                && current.chunk_of[old.start + j] == cur_chunk
                && wanted.chunk_of[new.start + j] == tgt_chunk
            {
                j += 1;
            }
            let width = current.width(old.start + i..old.start + j);
            let changes = attr_changes(current.attrs(old.start + i), wanted.attrs(new.start + i));
            if !changes.is_empty() {
                text.format(txn, pos, width, changes);
            }
            for k in i..j {
                if let Key::Shared(_) = current.keys[old.start + k] {
                    self.restore_same(
                        txn,
                        current.value(old.start + k),
                        wanted.value(new.start + k),
                    )?;
                }
            }
            pos += width;
            i = j;
        }
        Ok(pos)
    }

    /// Inserts the version's units `new` at `pos`, with its formatting.
    /// Returns the offset after them.
    fn insert(
        &self,
        txn: &mut TransactionMut,
        text: &TextRef,
        mut pos: u32,
        wanted: &Units,
        new: std::ops::Range<usize>,
    ) -> Result<u32, RestoreDiffError> {
        let mut i = new.start;
        while i < new.end {
            let chunk = wanted.chunk_of[i];
            let attrs = wanted.attrs(i).cloned().unwrap_or_default();
            if let Key::Char(_) = wanted.keys[i] {
                let mut run = String::new();
                while i < new.end && wanted.chunk_of[i] == chunk {
                    if let Key::Char(c) = wanted.keys[i] {
                        run.push(c);
                    }
                    i += 1;
                }
                text.insert_with_attributes(txn, pos, &run, attrs);
                pos += len_u32(run.encode_utf16().count());
            } else {
                self.insert_value(txn, Place::Text(text, pos, attrs), wanted.value(i))?;
                pos += 1;
                i += 1;
            }
        }
        Ok(pos)
    }
}

/// Merges string runs that the edits left split although the version has
/// them as one run.
///
/// Every format marker splits a run, even one that changes nothing: an
/// insert placed in front of a marker it could not skip, followed by a
/// re-format that deletes that marker, leaves a redundant pair such as
/// `bold=null, bold=true` between two bold runs (yrs only cleans these up
/// for remote transactions, and only with `cleanup_formatting` on). Yjs
/// renders (and `doc_json` writes) such runs as two, so the content would
/// differ from the version's. Re-formatting the whole run with its
/// attributes, and null for every other attribute the text has used,
/// deletes the markers inside it; the formatting itself is unchanged.
fn merge_split_runs(
    txn: &mut TransactionMut,
    text: &TextRef,
    before: &Units,
    wanted: &Units,
) -> Result<(), RestoreDiffError> {
    let mut keys: Vec<std::sync::Arc<str>> = Vec::new();
    for chunk in before.chunks.iter().chain(&wanted.chunks) {
        for key in chunk.attributes.iter().flat_map(|a| a.keys()) {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }
    // Each pass only deletes markers; a few passes settle any nesting.
    for _ in 0..4 {
        let result = Units::of(txn, Some(super::branch_ptr(text)))?;
        if result.keys != wanted.keys {
            return Ok(()); // not reachable: the diff made them equal
        }
        let mut merged = false;
        let (mut i, mut pos) = (0, 0u32);
        while i < wanted.keys.len() {
            let chunk = wanted.chunk_of[i];
            let mut end = i + 1;
            while end < wanted.keys.len() && wanted.chunk_of[end] == chunk {
                end += 1;
            }
            let width = wanted.width(i..end);
            if result.chunk_of[i] != result.chunk_of[end - 1] {
                let mut attrs: Attrs = keys.iter().map(|k| (k.clone(), Any::Null)).collect();
                if let Some(own) = wanted.attrs(i) {
                    attrs.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                text.format(txn, pos, width, attrs);
                merged = true;
            }
            pos += width;
            i = end;
        }
        if !merged {
            break;
        }
    }
    Ok(())
}

/// The formatting to apply so that `current` becomes `wanted`: changed and
/// added attributes with their new value, removed ones as null.
fn attr_changes(current: Option<&Attrs>, wanted: Option<&Attrs>) -> Attrs {
    let mut changes = Attrs::new();
    if let Some(wanted) = wanted {
        for (key, value) in wanted {
            if current.and_then(|c| c.get(key)) != Some(value) {
                changes.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(current) = current {
        for key in current.keys() {
            if wanted.is_none_or(|w| !w.contains_key(key)) {
                changes.insert(key.clone(), Any::Null);
            }
        }
    }
    changes
}
