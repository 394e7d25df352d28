//! The send-time field carried inside every benchmark update.
//!
//! Each precomputed update inserts a fixed-width ASCII string into a Y.Text.
//! Yjs v1 stores inserted text verbatim, so the string's bytes appear as-is in
//! the encoded update, and overwriting its digits with other digits keeps the
//! update valid. Senders patch the time in right before writing; receivers
//! find the field with a substring search, without decoding the update.
//!
//! Layout (26 bytes): `@@ts` + 14-digit microseconds since [`epoch`] + `c` +
//! 6-digit sender index + `;`.

use std::sync::OnceLock;
use std::time::Instant;

use memchr::memmem;

const MARKER: &[u8] = b"@@ts";
const MICROS_DIGITS: usize = 14;
const SENDER_DIGITS: usize = 6;
/// Length of the whole field in bytes (and in Yjs clock units: it is ASCII).
pub const FIELD_LEN: usize = MARKER.len() + MICROS_DIGITS + 1 + SENDER_DIGITS + 1;
/// Largest sender index the field can carry.
pub const MAX_SENDER: u32 = 999_999;

/// The instant all stamps count from. Senders and receivers live in the same
/// process, so one monotonic clock serves both.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds elapsed since [`epoch`].
pub fn now_micros() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The text a sender inserts: its index filled in, the time still zero.
///
/// # Panics
/// When `sender` exceeds [`MAX_SENDER`].
pub fn field_text(sender: u32) -> String {
    assert!(sender <= MAX_SENDER, "sender index {sender} does not fit");
    format!(
        "@@ts{:0mw$}c{:0sw$};",
        0,
        sender,
        mw = MICROS_DIGITS,
        sw = SENDER_DIGITS
    )
}

/// Where the field starts in `bytes`, if it holds one.
pub fn locate(bytes: &[u8]) -> Option<usize> {
    memmem::find(bytes, MARKER).filter(|&at| parse_at(bytes, at).is_some())
}

/// Writes `micros` into the field that starts at `at`.
///
/// # Panics
/// When `at` is not the start of a field.
pub fn patch(bytes: &mut [u8], at: usize, micros: u64) {
    assert_eq!(
        &bytes[at..at + MARKER.len()],
        MARKER,
        "no stamp field at {at}"
    );
    let digits = &mut bytes[at + MARKER.len()..at + MARKER.len() + MICROS_DIGITS];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

/// One field read back from received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub micros: u64,
    pub sender: u32,
}

/// Every well-formed field in `bytes` (a relayed update carries one; a
/// merged one could carry several).
pub fn find_all(bytes: &[u8]) -> impl Iterator<Item = Stamp> + '_ {
    memmem::find_iter(bytes, MARKER).filter_map(move |at| parse_at(bytes, at))
}

fn parse_at(bytes: &[u8], at: usize) -> Option<Stamp> {
    let field = bytes.get(at..at + FIELD_LEN)?;
    let micros = digits(&field[MARKER.len()..MARKER.len() + MICROS_DIGITS])?;
    let rest = &field[MARKER.len() + MICROS_DIGITS..];
    if rest[0] != b'c' || rest[rest.len() - 1] != b';' {
        return None;
    }
    let sender = digits(&rest[1..1 + SENDER_DIGITS])?;
    Some(Stamp {
        micros,
        sender: u32::try_from(sender).ok()?,
    })
}

fn digits(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, Text, Transact, Update};

    use super::*;

    /// An update inserting `field_text(sender)`, as the workload builds them.
    fn update_with_field(sender: u32) -> Vec<u8> {
        let doc = Doc::with_client_id(42);
        let text = doc.get_or_insert_text("bench");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &field_text(sender));
        txn.encode_update_v1()
    }

    #[test]
    fn field_has_fixed_width() {
        assert_eq!(field_text(0).len(), FIELD_LEN);
        assert_eq!(field_text(MAX_SENDER).len(), FIELD_LEN);
    }

    #[test]
    fn patched_update_stays_valid_and_reads_back() {
        let mut update = update_with_field(1234);
        let at = locate(&update).expect("field present in encoded update");
        let before = update.len();

        patch(&mut update, at, 98_765_432_101);

        assert_eq!(update.len(), before);
        let stamps: Vec<Stamp> = find_all(&update).collect();
        assert_eq!(
            stamps,
            vec![Stamp {
                micros: 98_765_432_101,
                sender: 1234
            }]
        );
        let doc = Doc::new();
        let text = doc.get_or_insert_text("bench");
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).expect("decodes"))
            .expect("applies");
        assert_eq!(
            text.get_string(&doc.transact()),
            "@@ts00098765432101c001234;"
        );
    }

    #[test]
    fn malformed_field_is_ignored() {
        assert_eq!(find_all(b"xx@@ts0000000000001Xc000001;").count(), 0);
        assert_eq!(find_all(b"@@ts00000000000001c000001").count(), 0);
        assert!(locate(b"no field here").is_none());
    }
}
