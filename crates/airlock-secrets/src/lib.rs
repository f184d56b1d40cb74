//! Secret material and where it comes from.
//!
//! Invariant I2 lives here: [`Secret`] has no `Debug`, `Display` or `Serialize` that reveals it,
//! is zeroized on drop and compares in constant time. Its bytes leave this crate through two
//! methods: [`Secret::expose_to_upstream`], which only the provider adapters call when they
//! build the outgoing request, and [`Secret::expose_to_store`], which only `airlock-secretstore`
//! calls to log in to a secret store or to seal a value.
#![warn(missing_docs)]

mod keyed;
mod reference;

pub use keyed::{random_token, HmacKey};
pub use reference::{
    value_to_secret, ReferencePolicy, ResolveError, SecretRef, MAX_SECRET_FILE,
    RESERVED_ENV_PREFIX, RESERVED_ENV_PREFIXES,
};

use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use subtle::ConstantTimeEq;

/// Whether text someone typed (a model name, a field in an admin request) looks like a provider
/// key or token, so that it is never copied into a log or an error: a known key prefix with a
/// long tail, or a long run of random-looking characters (mixed-case alphanumerics or hex).
pub fn looks_like_key(text: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "sk-",
        "sk_",
        "gsk_",
        "xai-",
        "hf_",
        "r8_",
        "pplx-",
        "AIza",
        "ghp_",
        "gho_",
        "ghs_",
        "ghu_",
        "github_pat_",
        "AKIA",
        "ASIA",
        "alk_",
        "eyJ",
        "csk-",
        "fw_",
        "nvapi-",
    ];
    let t = text.trim();
    if t.len() >= 20 && PREFIXES.iter().any(|p| t.starts_with(p)) {
        return true;
    }
    t.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
        let b = w.as_bytes();
        let hex = b.len() >= 32 && b.iter().all(u8::is_ascii_hexdigit);
        let mixed = b.len() >= 30
            && b.iter().any(u8::is_ascii_uppercase)
            && b.iter().any(u8::is_ascii_lowercase)
            && b.iter().any(u8::is_ascii_digit);
        hex || mixed
    })
}

/// A URL path with every key-shaped segment replaced by `[redacted]`, for logs and records
/// (a key pasted into a URL, `/admin/v1/credentials/sk-…`, must not be copied anywhere).
pub fn redact_path(path: &str) -> String {
    if !path.split('/').any(looks_like_key) {
        return path.to_string();
    }
    path.split('/')
        .map(|seg| {
            if looks_like_key(seg) {
                "[redacted]"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A provider key or any other secret value. It cannot be printed, serialized or cloned
/// implicitly; its memory is wiped when it is dropped.
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value; the `String` is moved in and zeroized with the `Secret`.
    pub fn new(value: String) -> Self {
        Secret(SecretString::from(value))
    }

    /// The secret's bytes, for the one place that needs them: the header of an outgoing
    /// request to the provider. Everything else (hashing, fingerprints, scrubbing) is a method
    /// here, so the gateway's only call is in `providers.rs`.
    pub fn expose_to_upstream(&self) -> &str {
        self.0.expose_secret()
    }

    /// The secret's bytes for a secret store: a store's own login secret (a Vault token, an
    /// AppRole secret id) sent to that store, or a value being sealed. Called only in
    /// `airlock-secretstore`.
    pub fn expose_to_store(&self) -> &str {
        self.0.expose_secret()
    }

    /// HMAC-SHA256 of `message` keyed with this secret, in lowercase hex: how airlock signs
    /// what it sends to a receiver that holds the same secret (anomaly webhooks).
    pub fn sign_hmac_sha256(&self, message: &[u8]) -> String {
        use hmac::Mac as _;
        // HMAC takes a key of any length.
        let Ok(mut m) =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(self.0.expose_secret().as_bytes())
        else {
            return String::new();
        };
        m.update(message);
        hex::encode(m.finalize().into_bytes())
    }

    /// Constant-time comparison with another secret.
    pub fn ct_eq(&self, other: &Secret) -> bool {
        self.0
            .expose_secret()
            .as_bytes()
            .ct_eq(other.0.expose_secret().as_bytes())
            .into()
    }

    /// The keyed fingerprint that identifies this secret in the inventory without revealing it.
    pub fn fingerprint(&self, key: &HmacKey) -> String {
        key.fingerprint(self.0.expose_secret().as_bytes())
    }

    /// A keyed hash for storing a credential airlock checks (admin keys), never the value.
    pub fn key_hash(&self, key: &HmacKey) -> String {
        key.key_hash(self.0.expose_secret().as_bytes())
    }

    /// Whether this secret's keyed hash is `stored_hex` (constant time).
    pub fn matches_key_hash(&self, key: &HmacKey, stored_hex: &str) -> bool {
        key.verify_key_hash(self.0.expose_secret().as_bytes(), stored_hex)
    }

    /// `hay` with every occurrence of the secret replaced by `[redacted]`, or `None` when it
    /// does not occur (secrets under 8 bytes are not searched for: too many false hits).
    pub fn scrub(&self, hay: &[u8]) -> Option<Vec<u8>> {
        let needle = self.0.expose_secret().as_bytes();
        if needle.len() < 8 {
            return None;
        }
        let finder = memchr::memmem::Finder::new(needle);
        finder.find(hay)?;
        let mut out = Vec::with_capacity(hay.len());
        let mut rest = hay;
        while let Some(i) = finder.find(rest) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(b"[redacted]");
            rest = &rest[i + needle.len()..];
        }
        out.extend_from_slice(rest);
        Some(out)
    }

    /// The last four characters (shown in the inventory, as providers' consoles do).
    /// Secrets shorter than 12 characters show nothing.
    pub fn last4(&self) -> String {
        let s = self.0.expose_secret();
        let n = s.chars().count();
        if n < 12 {
            return String::new();
        }
        s.chars().skip(n - 4).collect()
    }

    /// Length in bytes (for validation messages; never the content).
    pub fn len(&self) -> usize {
        self.0.expose_secret().len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.expose_secret().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_signature_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe".
        let s = Secret::new("Jefe".into());
        assert_eq!(
            s.sign_hmac_sha256(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn debug_never_shows_the_value() {
        let canary = format!("canary-{}", random_token(16));
        let s = Secret::new(canary.clone());
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains(&canary), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn key_shaped_text_is_recognised_and_model_names_are_not() {
        // Built at run time: no key-shaped literal in the repository.
        let tail = random_token(24);
        for key in [
            format!("sk-proj-{tail}"),
            format!("{}{tail}", "sk-ant-api03-"),
            format!("AIza{tail}"),
            format!("gsk_{tail}"),
            "aB3".repeat(11),
            "0f".repeat(16),
        ] {
            assert!(looks_like_key(&key), "{key}");
        }
        for model in [
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            "claude-3-5-sonnet-20241022",
            "models/gemini-2.0-flash",
            "ft:gpt-4o-mini:acme::AbC123xy",
            "llama3.1:8b",
            "sk-model",
            "mistral-large-latest",
        ] {
            assert!(!looks_like_key(model), "{model}");
        }
    }

    #[test]
    fn key_shaped_path_segments_are_redacted() {
        let key = format!("sk-proj-{}", random_token(24));
        let p = redact_path(&format!("/admin/v1/credentials/{key}"));
        assert_eq!(p, "/admin/v1/credentials/[redacted]");
        assert_eq!(
            redact_path("/v1/models/gpt-4o-mini"),
            "/v1/models/gpt-4o-mini"
        );
    }

    #[test]
    fn constant_time_equality() {
        let a = Secret::new("abcdefgh".into());
        assert!(a.ct_eq(&Secret::new("abcdefgh".into())));
        assert!(!a.ct_eq(&Secret::new("abcdefgi".into())));
        assert!(!a.ct_eq(&Secret::new("abc".into())));
    }

    #[test]
    fn last4_and_fingerprint() {
        let key = HmacKey::generate();
        let s = Secret::new("0123456789abcdefWXYZ".into());
        assert_eq!(s.last4(), "WXYZ");
        assert_eq!(Secret::new("short".into()).last4(), "");
        let fp = s.fingerprint(&key);
        assert!(fp.starts_with("hmac-sha256:"));
        assert_eq!(
            fp,
            Secret::new("0123456789abcdefWXYZ".into()).fingerprint(&key)
        );
        assert_ne!(
            fp,
            s.fingerprint(&HmacKey::generate()),
            "fingerprints are keyed"
        );
        assert!(!fp.contains("WXYZ"));
    }
}
