//! `X-Crdt-Hub-Signature: sha256=<hex>`: the HMAC-SHA256 of the raw body
//! under `--webhook-secret`, so a receiver can tell our requests from
//! forged ones (docs/webhooks.md shows the check in Node and Python).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's value for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut value = String::with_capacity(7 + digest.len() * 2);
    value.push_str("sha256=");
    for byte in digest {
        value.push_str(&format!("{byte:02x}"));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4231_test_case_2() {
        // RFC 4231, 4.3: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
