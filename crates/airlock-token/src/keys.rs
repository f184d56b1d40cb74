//! Root signing keys. Each key has a numeric id (the Biscuit `root_key_id`), so a new key can be
//! introduced while tokens signed by the previous one still verify.
//!
//! Files in the key directory: `root-<id>.key` (hex Ed25519 private key, mode 0600) and
//! `root-<id>.pub` (hex public key, shareable: it is all that offline verification needs).

use crate::TokenError;
use biscuit_auth::{KeyPair, PrivateKey, PublicKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The signing key and every public key that tokens may have been signed with.
pub struct KeyRing {
    signing: KeyPair,
    signing_id: u32,
    public: BTreeMap<u32, PublicKey>,
}

fn key_path(dir: &Path, id: u32, ext: &str) -> PathBuf {
    dir.join(format!("root-{id}.{ext}"))
}

impl KeyRing {
    /// Generates a new root key with `id` in `dir`; refuses to overwrite an existing one.
    pub fn generate(dir: &Path, id: u32) -> Result<PublicKey, TokenError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| TokenError::Keys(format!("{}: {e}", dir.display())))?;
        let priv_path = key_path(dir, id, "key");
        if priv_path.exists() {
            return Err(TokenError::Keys(format!(
                "{} already exists",
                priv_path.display()
            )));
        }
        let kp = KeyPair::new();
        let hex = Zeroizing::new(kp.private().to_bytes_hex());
        write_private(&priv_path, hex.as_bytes())?;
        let pub_hex = kp.public().to_bytes_hex();
        std::fs::write(key_path(dir, id, "pub"), format!("ed25519/{pub_hex}\n"))
            .map_err(|e| TokenError::Keys(e.to_string()))?;
        Ok(kp.public())
    }

    /// Loads every `root-*.key` in `dir`; `signing_id` names the one that signs new tokens.
    pub fn load(dir: &Path, signing_id: u32) -> Result<Self, TokenError> {
        let mut public = BTreeMap::new();
        let mut signing = None;
        let entries = std::fs::read_dir(dir).map_err(|e| {
            TokenError::Keys(format!("cannot read key directory {}: {e}", dir.display()))
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(id) = name
                .strip_prefix("root-")
                .and_then(|r| r.strip_suffix(".key"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let text = Zeroizing::new(
                std::fs::read_to_string(entry.path())
                    .map_err(|e| TokenError::Keys(format!("{name}: {e}")))?,
            );
            let pk =
                PrivateKey::from_bytes_hex(text.trim(), biscuit_auth::builder::Algorithm::Ed25519)
                    .map_err(|_| {
                        TokenError::Keys(format!("{name} is not a hex Ed25519 private key"))
                    })?;
            let kp = KeyPair::from(&pk);
            public.insert(id, kp.public());
            if id == signing_id {
                signing = Some(kp);
            }
        }
        let signing = signing.ok_or_else(|| {
            TokenError::Keys(format!(
                "signing key root-{signing_id}.key not found in {}",
                dir.display()
            ))
        })?;
        Ok(KeyRing {
            signing,
            signing_id,
            public,
        })
    }

    /// A ring that can only verify (offline verification with a public key).
    pub fn verify_only(id: u32, key: PublicKey) -> Self {
        let mut public = BTreeMap::new();
        public.insert(id, key);
        // A throwaway signing key: tokens signed by it verify against nothing in `public`.
        KeyRing {
            signing: KeyPair::new(),
            signing_id: u32::MAX,
            public,
        }
    }

    /// Drops every key with an id below `min` from verification (an incident lockdown retires
    /// the generations before it: tokens they signed no longer verify).
    pub fn retire_below(mut self, min: u32) -> Self {
        self.public.retain(|id, _| *id >= min);
        self
    }

    /// The highest key id in the ring.
    pub fn newest_id(&self) -> u32 {
        self.public.keys().next_back().copied().unwrap_or(0)
    }

    pub(crate) fn signing(&self) -> (&KeyPair, u32) {
        (&self.signing, self.signing_id)
    }

    /// The public key for a key id.
    pub fn public(&self, id: Option<u32>) -> Option<PublicKey> {
        match id {
            Some(id) => self.public.get(&id).copied(),
            None => None,
        }
    }

    /// The id of the key that signs new tokens.
    pub fn signing_id(&self) -> u32 {
        self.signing_id
    }

    /// Hex public key of the signing key, `ed25519/<hex>`.
    pub fn signing_public_hex(&self) -> String {
        format!("ed25519/{}", self.signing.public().to_bytes_hex())
    }
}

/// Parses a public key as written in `root-<id>.pub` (`ed25519/<hex>` or bare hex).
pub fn parse_public_key(s: &str) -> Result<PublicKey, TokenError> {
    let hex = s.trim().strip_prefix("ed25519/").unwrap_or(s.trim());
    PublicKey::from_bytes_hex(hex, biscuit_auth::builder::Algorithm::Ed25519).map_err(|_| {
        TokenError::Keys("not an Ed25519 public key (expected ed25519/<64 hex>)".into())
    })
}

/// Writes a private file with mode 0600, created fresh.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| TokenError::Keys(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.write_all(b"\n"))
        .map_err(|e| TokenError::Keys(format!("{}: {e}", path.display())))
}
