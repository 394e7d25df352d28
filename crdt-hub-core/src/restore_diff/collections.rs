//! Restoring maps (Y.Map, XML attributes) and sequences (Y.Array,
//! Y.XmlFragment, Y.XmlElement children).

use std::collections::{HashMap, HashSet};

use similar::DiffOp;
use yrs::branch::BranchPtr;
use yrs::{Any, Array, ArrayRef, Map, MapRef, Out, ReadTxn, TransactionMut};

use super::{Key, Kind, Place, RestoreDiffError, Restorer, len_u32};

impl<T: ReadTxn> Restorer<'_, T> {
    /// Map entries: Y.Map content, XML attributes.
    pub(super) fn restore_map(
        &self,
        txn: &mut TransactionMut,
        cur: BranchPtr,
        tgt: Option<BranchPtr>,
    ) -> Result<(), RestoreDiffError> {
        let map = MapRef::from(cur);
        let current: HashMap<String, Out> = map
            .iter(txn)
            .map(|(key, value)| (key.to_string(), value))
            .collect();
        let mut wanted: Vec<(String, Out)> = match tgt {
            Some(tgt) => MapRef::from(tgt)
                .iter(self.target)
                .map(|(key, value)| (key.to_string(), value))
                .collect(),
            None => Vec::new(),
        };
        if current.is_empty() && wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        let keep: HashSet<&str> = wanted.iter().map(|(key, _)| key.as_str()).collect();
        let mut stale: Vec<&String> = current
            .keys()
            .filter(|key| !keep.contains(key.as_str()))
            .collect();
        stale.sort();
        for key in stale {
            map.remove(txn, key);
        }
        for (key, value) in &wanted {
            match current.get(key) {
                Some(existing) if same_value(existing, value) => {}
                Some(existing) => match (Kind::of(existing), Kind::of(value)) {
                    (Some((cur_kind, cur_branch)), Some((tgt_kind, tgt_branch)))
                        if cur_kind == tgt_kind =>
                    {
                        let list = cur_kind.list_kind();
                        self.restore_branch(txn, cur_branch, Some(tgt_branch), list)?;
                    }
                    _ => self.insert_value(txn, Place::Map(&map, key), value)?,
                },
                None => self.insert_value(txn, Place::Map(&map, key), value)?,
            }
        }
        Ok(())
    }

    /// Elements of an array, an XML fragment or an XML element.
    pub(super) fn restore_array(
        &self,
        txn: &mut TransactionMut,
        cur: BranchPtr,
        tgt: Option<BranchPtr>,
    ) -> Result<(), RestoreDiffError> {
        let array = ArrayRef::from(cur);
        let current: Vec<Out> = array.iter(txn).collect();
        let wanted: Vec<Out> = match tgt {
            Some(tgt) => ArrayRef::from(tgt).iter(self.target).collect(),
            None => Vec::new(),
        };
        if current.is_empty() && wanted.is_empty() {
            return Ok(());
        }
        let current_keys = current.iter().map(Key::of).collect::<Result<Vec<_>, _>>()?;
        let wanted_keys = wanted.iter().map(Key::of).collect::<Result<Vec<_>, _>>()?;
        let ops = self.diff(&current_keys, &wanted_keys);
        let mut pos = 0u32;
        self.apply_array_ops(txn, &array, &mut pos, &current, &wanted, ops, false)
    }

    /// Applies a diff of `current` into `wanted` to `array`, from `pos`.
    ///
    /// Elements replaced by others get a second, looser diff in which
    /// shared types match by kind: an XML paragraph or a map that the
    /// version and the document hold as different items (one re-created
    /// by an earlier restore, or in an unrelated room) is restored in
    /// place instead of deleted and copied, so that restoring twice
    /// changes nothing the second time.
    #[allow(clippy::too_many_arguments)]
    fn apply_array_ops(
        &self,
        txn: &mut TransactionMut,
        array: &ArrayRef,
        pos: &mut u32,
        current: &[Out],
        wanted: &[Out],
        ops: Vec<DiffOp>,
        loose: bool,
    ) -> Result<(), RestoreDiffError> {
        for op in ops {
            let (old, new) = (op.old_range(), op.new_range());
            if let DiffOp::Equal { .. } = op {
                for (cur_value, tgt_value) in current[old.clone()].iter().zip(&wanted[new]) {
                    self.restore_same(txn, cur_value, tgt_value)?;
                }
                *pos += len_u32(old.len());
                continue;
            }
            if !loose && !old.is_empty() && !new.is_empty() {
                let (current, wanted) = (&current[old], &wanted[new]);
                let ops = self.diff(&loose_keys(current), &loose_keys(wanted));
                self.apply_array_ops(txn, array, pos, current, wanted, ops, true)?;
                continue;
            }
            if !old.is_empty() {
                array.remove_range(txn, *pos, len_u32(old.len()));
            }
            // Runs of plain values go in as one item; shared types one by one.
            let mut values: Vec<Any> = Vec::new();
            for value in &wanted[new] {
                if let Out::Any(any) = value {
                    values.push(any.clone());
                    continue;
                }
                *pos = flush_values(txn, array, *pos, &mut values);
                self.insert_value(txn, Place::Array(array, *pos), value)?;
                *pos += 1;
            }
            *pos = flush_values(txn, array, *pos, &mut values);
        }
        Ok(())
    }
}

/// Keys for the looser diff: shared types by kind, values as they are.
fn loose_keys(values: &[Out]) -> Vec<Key> {
    values
        .iter()
        .map(|value| match Kind::of(value) {
            Some((kind, _)) => Key::Like(kind),
            None => Key::of(value).unwrap_or(Key::Doc(String::new())),
        })
        .collect()
}

/// Inserts the pending plain values at `pos`; returns the position after.
fn flush_values(
    txn: &mut TransactionMut,
    array: &ArrayRef,
    pos: u32,
    values: &mut Vec<Any>,
) -> u32 {
    if values.is_empty() {
        return pos;
    }
    let n = len_u32(values.len());
    array.insert_range(txn, pos, values.drain(..));
    pos + n
}

/// Plain values compare by value, subdocuments by guid; shared types are
/// never "the same value" (they are restored in place instead).
fn same_value(a: &Out, b: &Out) -> bool {
    match (a, b) {
        (Out::Any(a), Out::Any(b)) => a == b,
        (Out::YDoc(a), Out::YDoc(b)) => a.guid() == b.guid(),
        _ => false,
    }
}
