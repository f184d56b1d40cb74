//! Keyed hashes: credential fingerprints and stored hashes of admin keys.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// A 256-bit HMAC key. Sub-keys for each purpose are derived from it with a label, so one key
/// file serves fingerprints and stored key hashes without the two being comparable.
pub struct HmacKey(Zeroizing<[u8; 32]>);

impl HmacKey {
    /// A fresh random key from the OS generator.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        HmacKey(k)
    }

    /// Parses the hex form written by [`HmacKey::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = Zeroizing::new(hex::decode(s.trim()).ok()?);
        let arr: [u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(HmacKey(Zeroizing::new(arr)))
    }

    /// Hex form, for the key file (mode 0600).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }

    fn mac(&self, label: &[u8], data: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an all-zero tag
        // rather than panic if the library ever changed that.
        let Ok(mut m) = <HmacSha256 as Mac>::new_from_slice(&self.0[..]) else {
            return [0u8; 32];
        };
        m.update(label);
        m.update(&[0]);
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Inventory fingerprint of a secret: `hmac-sha256:` and the first 128 bits in hex.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let tag = self.mac(b"airlock fingerprint v1", secret);
        format!("hmac-sha256:{}", hex::encode(&tag[..16]))
    }

    /// Stored hash of an API key's secret part (admin and service-account keys).
    pub fn key_hash(&self, secret: &[u8]) -> String {
        hex::encode(self.mac(b"airlock key hash v1", secret))
    }

    /// Constant-time check of a presented key secret against its stored hash.
    pub fn verify_key_hash(&self, secret: &[u8], stored_hex: &str) -> bool {
        let Ok(stored) = hex::decode(stored_hex) else {
            return false;
        };
        let tag = self.mac(b"airlock key hash v1", secret);
        tag.as_slice().ct_eq(stored.as_slice()).into()
    }
}

/// A random URL-safe string of `bytes` random bytes (lowercase hex), for ids and key secrets.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_roundtrip_and_hex() {
        let k = HmacKey::generate();
        let h = k.key_hash(b"s3cret");
        assert!(k.verify_key_hash(b"s3cret", &h));
        assert!(!k.verify_key_hash(b"s3cres", &h));
        assert!(!k.verify_key_hash(b"s3cret", "zz"));
        let k2 = HmacKey::from_hex(&k.to_hex()).expect("hex");
        assert!(k2.verify_key_hash(b"s3cret", &h));
        assert!(HmacKey::from_hex("abcd").is_none());
        assert_ne!(k.fingerprint(b"x"), format!("hmac-sha256:{}", &h[..32]));
    }
}
