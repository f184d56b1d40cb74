//! Sealed secrets: envelope encryption under a key-encryption key (KEK) the customer holds.
//!
//! Each secret gets a fresh 256-bit data key and is encrypted with AES-256-GCM (ring), with
//! `airlock-sealed-v1 \n ID \n CREDENTIAL` as associated data, so a ciphertext moved to another
//! row or credential does not open. The data key is wrapped by the KEK: OpenBao Transit
//! (`transit://KEY`), AWS KMS (`aws-kms://KEY_ID`, the sealed id bound as encryption context)
//! or a local key file (`keyfile:/path`, AES-256-GCM, for development). Only ciphertext and
//! wrapped keys reach the database; revoking the KEK at its store makes every sealed secret
//! unreadable to airlock.

use airlock_secrets::{ResolveError, Secret};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A key-encryption key, by where it lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Kek {
    /// `keyfile:/path`: versions of a local 256-bit key, one `vN HEX` per line.
    Keyfile(PathBuf),
    /// `transit://KEY` or `transit://MOUNT/KEY` on OpenBao/Vault.
    Transit(String),
    /// `aws-kms://KEY_ID` (id, ARN or alias).
    AwsKms(String),
}

impl Kek {
    /// Parses a KEK reference.
    pub fn parse(s: &str) -> Result<Self, String> {
        const HELP: &str = "a KEK is keyfile:/absolute/path, transit://KEY (OpenBao/Vault Transit) or aws-kms://KEY_ID";
        let ok = |t: &str, extra: &[char]| {
            !t.is_empty()
                && t.len() <= 512
                && t.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || extra.contains(&c)
                })
        };
        if let Some(p) = s.strip_prefix("keyfile:") {
            let p = PathBuf::from(p);
            return if p.is_absolute() {
                Ok(Kek::Keyfile(p))
            } else {
                Err(HELP.into())
            };
        }
        if let Some(k) = s.strip_prefix("transit://") {
            let parts: Vec<&str> = k.split('/').collect();
            return if parts.len() <= 2
                && parts.iter().all(|p| ok(p, &[]) && *p != "." && *p != "..")
            {
                Ok(Kek::Transit(k.into()))
            } else {
                Err(HELP.into())
            };
        }
        if let Some(k) = s.strip_prefix("aws-kms://") {
            return if ok(k, &[':', '/']) {
                Ok(Kek::AwsKms(k.into()))
            } else {
                Err(HELP.into())
            };
        }
        Err(HELP.into())
    }
}

impl fmt::Display for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kek::Keyfile(p) => write!(f, "keyfile:{}", p.display()),
            Kek::Transit(k) => write!(f, "transit://{k}"),
            Kek::AwsKms(k) => write!(f, "aws-kms://{k}"),
        }
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({self})")
    }
}

/// A fresh random 256-bit key.
pub fn random_key() -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *k);
    k
}

fn random_nonce() -> [u8; 12] {
    let mut n = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// AES-256-GCM seal; returns ciphertext || tag.
pub fn aead_seal(key: &[u8], nonce: [u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let Ok(k) = UnboundKey::new(&AES_256_GCM, key) else {
        return Vec::new();
    };
    let k = LessSafeKey::new(k);
    let mut buf = plaintext.to_vec();
    // Sealing fails only for inputs longer than GCM allows (64 GiB); secrets are ≤ 64 KiB.
    if k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .is_err()
    {
        zeroize::Zeroize::zeroize(&mut buf);
        return Vec::new();
    }
    buf
}

/// AES-256-GCM open; `None` when the key, nonce, associated data or ciphertext do not match.
pub fn aead_open(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let n = k.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?.len();
    buf.truncate(n);
    Some(buf)
}

/// The associated data binding a sealed secret to its id and credential.
pub fn secret_aad(id: &str, credential: &str) -> Vec<u8> {
    format!("airlock-sealed-v1\n{id}\n{credential}").into_bytes()
}

/// The associated data binding a keyfile-wrapped data key to its sealed id.
fn wrap_aad(id: &str) -> Vec<u8> {
    format!("airlock-kek-v1\n{id}").into_bytes()
}

#[cfg(unix)]
fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// The versions of a key file, oldest first.
pub struct Keyfile {
    versions: Vec<(u32, Zeroizing<[u8; 32]>)>,
}

impl Keyfile {
    /// Reads a key file; it must not be readable by other users.
    pub fn load(path: &Path) -> Result<Self, ResolveError> {
        let shown = path.display();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| {
                ResolveError::Refused(format!("KEK keyfile:{shown} cannot be read: {}", e.kind()))
            })?;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(ResolveError::Refused(format!(
                    "KEK keyfile:{shown} is readable by other users (mode {:o}); run chmod 600 on it",
                    mode & 0o777
                )));
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            ResolveError::Refused(format!("KEK keyfile:{shown} cannot be read: {}", e.kind()))
        })?);
        let mut versions = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line.split_once(' ').and_then(|(v, hex)| {
                let n: u32 = v.strip_prefix('v')?.parse().ok()?;
                let mut k = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(hex.trim(), &mut *k).ok()?;
                Some((n, k))
            });
            match parsed {
                Some((n, _)) if versions.iter().any(|(m, _)| *m == n) => {
                    return Err(ResolveError::Refused(format!(
                        "KEK keyfile:{shown} holds version v{n} twice; keep one line per version"
                    )))
                }
                Some(v) => versions.push(v),
                None => {
                    return Err(ResolveError::Refused(format!(
                        "KEK keyfile:{shown} has a line that is not `vN <64 hex digits>`"
                    )))
                }
            }
        }
        if versions.is_empty() {
            return Err(ResolveError::Refused(format!(
                "KEK keyfile:{shown} holds no key"
            )));
        }
        versions.sort_by_key(|(n, _)| *n);
        Ok(Keyfile { versions })
    }

    /// Creates a key file with one version (mode 600), or adds a version to an existing one.
    /// Returns the new version number. Serialised across processes by an exclusive lock on
    /// `PATH.lock`; the file is rewritten whole (temporary file, fsync, rename), so a reader
    /// never sees half a line and two rotations never write the same version twice.
    pub fn add_version(path: &Path) -> Result<u32, String> {
        use std::io::Write;
        let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let private = |o: &mut std::fs::OpenOptions| {
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600).custom_flags(libc_nofollow());
            }
            let _ = o;
        };
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "{} is a symlink: add the new version where the file really lives",
                path.display()
            ));
        }
        let mut lock_name = path.as_os_str().to_os_string();
        lock_name.push(".lock");
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).truncate(false).write(true);
        private(&mut opts);
        let lock = opts
            .open(std::path::PathBuf::from(lock_name))
            .map_err(err)?;
        lock.lock().map_err(err)?;
        let mut text = Zeroizing::new(String::new());
        let next = match Keyfile::load(path) {
            Ok(k) => {
                // Comments and versions as they were, then the new line.
                let old = Zeroizing::new(std::fs::read_to_string(path).map_err(err)?);
                for line in old.lines() {
                    text.push_str(line.trim_end());
                    text.push('\n');
                }
                k.versions
                    .last()
                    .map(|(n, _)| n.checked_add(1))
                    .unwrap_or(Some(1))
                    .ok_or("the key file has no version number left")?
            }
            Err(_) if !path.exists() => 1,
            Err(e) => return Err(e.to_string()),
        };
        let key = random_key();
        text.push_str(&format!("v{next} {}\n", hex::encode(*key)));
        // A fresh, unpredictable temporary name, created exclusively: nothing planted there
        // (a symlink, a file with loose permissions) can receive the keys.
        let mut tmp_name = path.as_os_str().to_os_string();
        tmp_name.push(format!(".tmp-{}", airlock_secrets::random_token(8)));
        let tmp = std::path::PathBuf::from(tmp_name);
        let mut topts = std::fs::OpenOptions::new();
        topts.create_new(true).write(true);
        private(&mut topts);
        let mut f = topts.open(&tmp).map_err(err)?;
        let written = f
            .write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        drop(lock);
        Ok(next)
    }

    /// Wraps `dk` under the newest version: `nonce || ciphertext`, and the version (`vN`).
    pub fn wrap(&self, id: &str, dk: &[u8]) -> Result<(Vec<u8>, String), ResolveError> {
        let Some((n, k)) = self.versions.last() else {
            return Err(ResolveError::Refused(
                "the KEK key file holds no key".into(),
            ));
        };
        let nonce = random_nonce();
        let mut out = nonce.to_vec();
        out.extend(aead_seal(&k[..], nonce, &wrap_aad(id), dk));
        Ok((out, format!("v{n}")))
    }

    /// Unwraps a data key wrapped under `version`.
    pub fn unwrap(
        &self,
        path: &Path,
        id: &str,
        version: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ResolveError> {
        let n: u32 = version
            .strip_prefix('v')
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ResolveError::Invalid(format!("bad keyfile version `{version}`")))?;
        let Some((_, k)) = self.versions.iter().find(|(v, _)| *v == n) else {
            return Err(ResolveError::Refused(format!(
                "KEK keyfile:{} no longer has version {version}",
                path.display()
            )));
        };
        if wrapped.len() < 12 {
            return Err(ResolveError::Invalid("a wrapped key is too short".into()));
        }
        aead_open(&k[..], &wrapped[..12], &wrap_aad(id), &wrapped[12..]).ok_or_else(|| {
            ResolveError::Refused(format!(
                "KEK keyfile:{} version {version} does not open this data key",
                path.display()
            ))
        })
    }
}

/// Encrypts a secret under its data key `dk` (used for this one secret only) with a random
/// nonce; returns (nonce, ciphertext).
#[allow(clippy::disallowed_methods)] // the value being sealed is encrypted here
pub fn seal_value(id: &str, credential: &str, secret: &Secret, dk: &[u8]) -> ([u8; 12], Vec<u8>) {
    let nonce = random_nonce();
    let ct = aead_seal(
        dk,
        nonce,
        &secret_aad(id, credential),
        secret.expose_to_store().as_bytes(),
    );
    (nonce, ct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_references() {
        for s in [
            "keyfile:/etc/airlock/kek",
            "transit://airlock-kek",
            "transit://transit2/airlock-kek",
            "aws-kms://alias/airlock",
            "aws-kms://arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        ] {
            assert_eq!(Kek::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "keyfile:rel",
            "transit://",
            "transit://a/b/c",
            "transit://../k",
            "transit://.",
            "aws-kms://",
            "kms://x",
            "",
        ] {
            assert!(Kek::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aead_binds_its_associated_data() {
        let k = random_key();
        let n = random_nonce();
        let ct = aead_seal(&k[..], n, b"a", b"hello world");
        assert_eq!(
            &aead_open(&k[..], &n, b"a", &ct).unwrap()[..],
            b"hello world"
        );
        assert!(aead_open(&k[..], &n, b"b", &ct).is_none());
        assert!(aead_open(&random_key()[..], &n, b"a", &ct).is_none());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(aead_open(&k[..], &n, b"a", &bad).is_none());
    }

    #[test]
    fn concurrent_rotations_never_repeat_a_version() {
        let dir =
            std::env::temp_dir().join(format!("airlock-kek-{}", airlock_secrets::random_token(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("kek.key");
        // A hand-made file without a final newline survives the first rotation.
        std::fs::write(&p, format!("v1 {}", "ab".repeat(32))).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || Keyfile::add_version(&p).unwrap())
            })
            .collect();
        let mut got: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, (2..=9).collect::<Vec<_>>());
        assert_eq!(Keyfile::load(&p).unwrap().versions.len(), 9);
        // Duplicates written by hand are refused rather than half-used.
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{text}v3 {}\n", "cd".repeat(32))).unwrap();
        let e = Keyfile::load(&p).err().unwrap().to_string();
        assert!(e.contains("twice"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keyfile_versions_wrap_and_unwrap() {
        let dir =
            std::env::temp_dir().join(format!("airlock-kek-{}", airlock_secrets::random_token(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("kek.key");
        assert_eq!(Keyfile::add_version(&p).unwrap(), 1);
        let kf = Keyfile::load(&p).unwrap();
        let dk = random_key();
        let (w, v) = kf.wrap("s_1", &dk[..]).unwrap();
        assert_eq!(v, "v1");
        assert_eq!(Keyfile::add_version(&p).unwrap(), 2);
        let kf = Keyfile::load(&p).unwrap();
        // Old versions still open; the newest wraps.
        assert_eq!(&kf.unwrap(&p, "s_1", "v1", &w).unwrap()[..], &dk[..]);
        assert_eq!(kf.wrap("s_1", &dk[..]).unwrap().1, "v2");
        // Bound to the sealed id.
        assert!(kf.unwrap(&p, "s_2", "v1", &w).is_err());
        assert!(kf.unwrap(&p, "s_1", "v9", &w).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = Keyfile::load(&p).err().unwrap().to_string();
            assert!(e.contains("chmod 600"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
