//! One log row per room per `append`: the updates a flush window collected
//! for a room are stored together.
//!
//! A row costs the database far more than its bytes: a B-tree insert into
//! `updates` and into its `(room, id)` index, and a foreign-key probe. One
//! row per update made SQLite a tenth of the server's CPU at 5,000 updates/s,
//! most of it per row. Folding the updates into one would cost more than the
//! rows it saves (yrs's merge re-sorts its inputs for every block it writes)
//! and v1 updates do not concatenate, so a row with several updates holds
//! them as a list: each update prefixed by its length as a varint, Yjs's own
//! `writeVarUint8Array` framing. The row's `update_count` says how many it
//! holds; a row holding one update stores it bare, exactly as rows written
//! before packing did.

use std::collections::BTreeMap;

use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use crate::{PendingUpdate, RoomName, UpdateId};

/// The updates of one room in one `append`, as one log row.
#[derive(Debug)]
pub(crate) struct Pack<'a> {
    pub room: &'a RoomName,
    /// Updates in `data`, at least 1.
    pub update_count: i64,
    /// The one update itself, or the length-prefixed list.
    pub data: PackData<'a>,
}

/// A pack's bytes: borrowed when it is a single update, so the common case
/// of one update per room per flush copies nothing.
#[derive(Debug)]
pub(crate) enum PackData<'a> {
    Single(&'a [u8]),
    List(Vec<u8>),
}

impl PackData<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            PackData::Single(data) => data,
            PackData::List(data) => data,
        }
    }
}

/// A batch cut into packs, one per room in room-name order (the order
/// Postgres takes the rooms' row locks in), with the pack of every update.
#[derive(Debug)]
pub(crate) struct Packed<'a> {
    pub packs: Vec<Pack<'a>>,
    /// `pack_of[i]` is the index in `packs` of `batch[i]`.
    pack_of: Vec<usize>,
}

impl<'a> Packed<'a> {
    /// Packs `batch`, keeping each room's updates in batch order.
    pub fn new(batch: &'a [PendingUpdate]) -> Self {
        let mut by_room: BTreeMap<&RoomName, Vec<usize>> = BTreeMap::new();
        for (i, update) in batch.iter().enumerate() {
            by_room.entry(&update.room).or_default().push(i);
        }
        let mut pack_of = vec![0; batch.len()];
        let packs = by_room
            .into_iter()
            .enumerate()
            .map(|(pack, (room, members))| {
                for &i in &members {
                    pack_of[i] = pack;
                }
                let data = match members.as_slice() {
                    [only] => PackData::Single(&batch[*only].data),
                    _ => {
                        let bytes = members.iter().map(|&i| batch[i].data.len() + 5).sum();
                        let mut list = Vec::with_capacity(bytes);
                        for &i in &members {
                            list.write_buf(&batch[i].data);
                        }
                        PackData::List(list)
                    }
                };
                Pack {
                    room,
                    update_count: i64::try_from(members.len()).unwrap_or(i64::MAX),
                    data,
                }
            })
            .collect();
        Self { packs, pack_of }
    }

    /// The id of every update of the batch, given the id each pack's row
    /// got (in the order of `packs`).
    pub fn update_ids(&self, row_ids: &[UpdateId]) -> Vec<UpdateId> {
        debug_assert_eq!(row_ids.len(), self.packs.len());
        self.pack_of.iter().map(|&pack| row_ids[pack]).collect()
    }
}

/// A stored row whose bytes do not split into the updates it claims.
#[derive(Debug, thiserror::Error)]
#[error("log entry {id} should hold {claimed} updates but {found}")]
pub(crate) struct BadPack {
    pub id: UpdateId,
    pub claimed: i64,
    pub found: String,
}

/// The updates a stored row holds, in append order.
///
/// # Errors
/// [`BadPack`] when `update_count` is below 1, or `data` is not exactly
/// that many length-prefixed updates.
pub(crate) fn unpack(
    id: UpdateId,
    update_count: i64,
    data: Vec<u8>,
) -> Result<Vec<Vec<u8>>, BadPack> {
    let bad = |found: String| BadPack {
        id,
        claimed: update_count,
        found,
    };
    match update_count {
        1 => return Ok(vec![data]),
        n if n < 1 => return Err(bad("the count is not positive".to_string())),
        _ => {}
    }
    // Each update takes at least its one-byte length prefix, so a count
    // beyond the row's length is corrupt before anything is allocated.
    let count = usize::try_from(update_count)
        .ok()
        .filter(|&n| n <= data.len())
        .ok_or_else(|| bad(format!("it has only {} bytes", data.len())))?;
    let mut cursor = Cursor::new(&data);
    let mut updates = Vec::with_capacity(count);
    for k in 0..count {
        let update = cursor
            .read_buf()
            .map_err(|e| bad(format!("update {} does not read: {e}", k + 1)))?;
        updates.push(update.to_vec());
    }
    if cursor.has_content() {
        return Err(bad(format!(
            "{} bytes follow the last one",
            data.len() - cursor.next
        )));
    }
    Ok(updates)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn pending(room: &RoomName, data: &[u8]) -> PendingUpdate {
        PendingUpdate {
            room: room.clone(),
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn a_batch_packs_per_room_and_unpacks_in_order() {
        let (a, b) = (RoomName::parse("a").unwrap(), RoomName::parse("b").unwrap());
        let long = vec![7u8; 300]; // a two-byte length prefix
        let batch = [
            pending(&b, &[1]),
            pending(&a, &[2, 2]),
            pending(&b, &long),
            pending(&b, &[]),
        ];
        let packed = Packed::new(&batch);
        assert_eq!(packed.packs.len(), 2);
        assert_eq!(packed.packs[0].room, &a);
        assert_eq!(packed.packs[0].update_count, 1);
        assert!(matches!(packed.packs[0].data, PackData::Single([2, 2])));
        assert_eq!(packed.packs[1].update_count, 3);
        assert_eq!(packed.update_ids(&[10, 11]), [11, 10, 11, 11]);

        let b_pack = &packed.packs[1];
        let unpacked = unpack(11, b_pack.update_count, b_pack.data.as_slice().to_vec()).unwrap();
        assert_eq!(unpacked, [vec![1], long, vec![]]);
        let a_pack = &packed.packs[0];
        assert_eq!(
            unpack(10, 1, a_pack.data.as_slice().to_vec()).unwrap(),
            [vec![2, 2]]
        );
    }

    #[test]
    fn rows_that_do_not_split_are_refused() {
        let mut two = Vec::new();
        two.write_buf([1, 2, 3]);
        two.write_buf([4]);
        assert_eq!(unpack(1, 2, two.clone()).unwrap().len(), 2);

        let err = unpack(5, 3, two.clone()).unwrap_err();
        assert_eq!(err.id, 5);
        assert!(err.to_string().contains("update 3 does not read"), "{err}");
        assert!(
            unpack(1, 1_000_000, two.clone()).is_err(),
            "count past the bytes"
        );
        assert!(unpack(1, 0, two.clone()).is_err());
        assert!(unpack(1, -2, two.clone()).is_err());

        let mut trailing = two.clone();
        trailing.push(0);
        let err = unpack(1, 2, trailing).unwrap_err();
        assert!(err.to_string().contains("1 bytes follow"), "{err}");

        let truncated = two[..two.len() - 1].to_vec();
        assert!(unpack(1, 2, truncated).is_err());
        // A length prefix claiming gigabytes allocates nothing.
        assert!(unpack(1, 2, vec![0xff, 0xff, 0xff, 0xff, 0x0f, 1]).is_err());
    }

    proptest::proptest! {
        /// Whatever a batch holds, each room gets back exactly its updates,
        /// in order, from its one row.
        #[test]
        fn every_batch_round_trips(
            batch in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(proptest::num::u8::ANY, 0..200)),
                0..40,
            )
        ) {
            let rooms: Vec<RoomName> =
                (0..4).map(|i| RoomName::parse(format!("r{i}")).unwrap()).collect();
            let batch: Vec<PendingUpdate> = batch
                .iter()
                .map(|(room, data)| pending(&rooms[usize::from(*room)], data))
                .collect();
            let packed = Packed::new(&batch);
            let row_ids: Vec<UpdateId> = (0..packed.packs.len() as i64).collect();
            let ids = packed.update_ids(&row_ids);
            for (row, pack) in packed.packs.iter().enumerate() {
                let expected: Vec<Vec<u8>> = batch
                    .iter()
                    .filter(|u| &u.room == pack.room)
                    .map(|u| u.data.to_vec())
                    .collect();
                let got = unpack(row as i64, pack.update_count, pack.data.as_slice().to_vec());
                proptest::prop_assert_eq!(got.unwrap(), expected);
            }
            for (update, id) in batch.iter().zip(ids) {
                proptest::prop_assert_eq!(packed.packs[id as usize].room, &update.room);
            }
        }

        /// Bytes and counts as a damaged database might hold them: an
        /// error or the updates, never a panic or a huge allocation.
        #[test]
        fn damaged_rows_never_panic(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            count in -3i64..80,
        ) {
            if let Ok(updates) = unpack(1, count, data.clone()) {
                proptest::prop_assert_eq!(updates.len() as i64, count);
                if count > 1 {
                    let total: usize = updates.iter().map(Vec::len).sum();
                    proptest::prop_assert!(total < data.len());
                }
            }
        }
    }
}
