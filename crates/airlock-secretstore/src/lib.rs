//! Where credentials' keys live, and the in-memory cache in front of them.
//!
//! [`Stores`] reads a [`SecretRef`] from its store (`env:`, `file:`, `exec:`, `vault://`,
//! `aws-sm://`, `sealed:`), seals new secrets under the configured KEK and rewraps them when
//! the KEK rotates. [`SecretCell`] keeps one credential's key in memory with a TTL, is
//! refreshed in the background before it expires, serves a stale value while the store is
//! down (up to `max_stale`) and drops it at once when the store refuses (the customer
//! revoked it). Values exist only as [`Secret`]; errors never contain them.
#![warn(missing_docs)]

pub mod aws;
mod cache;
pub mod exec;
pub mod sealed;
pub mod vault;

pub use cache::{CachePolicy, Fetch, SecretCell};

use airlock_secrets::{ReferencePolicy, ResolveError, Secret, SecretRef};
use airlock_store::{SealedRow, Store};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use sealed::{Kek, Keyfile};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The HTTP client (hyper + rustls) shared with the provider path.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Text from a store's error message with every key-shaped word replaced (a store may echo
/// what it was sent).
pub fn redact_words(text: &str) -> String {
    // Whitespace collapsed too: Vault's messages are multi-line lists.
    text.split_whitespace()
        .map(|w| {
            if airlock_secrets::looks_like_key(w) {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How stores are reached.
pub struct Settings {
    /// OpenBao/Vault.
    pub vault: vault::VaultConfig,
    /// AWS.
    pub aws: aws::AwsConfig,
    /// The KEK new secrets are sealed under (`keyfile:`, `transit://`, `aws-kms://`).
    pub kek: Option<String>,
    /// Longest a store may take to answer.
    pub timeout: Duration,
    /// What `exec:` commands may run.
    pub exec: exec::ExecPolicy,
    /// Where `file:` references may point.
    pub file_policy: ReferencePolicy,
}

/// A secret read from its store, with the store's version of it.
pub struct Resolution {
    /// The value.
    pub secret: Secret,
    /// KV version, Secrets Manager version id, file modification time, sealed KEK version.
    pub version: Option<String>,
}

/// The secret stores.
pub struct Stores {
    settings: Settings,
    kek: Option<Kek>,
    vault: Option<vault::Vault>,
    aws: tokio::sync::OnceCell<aws::Aws>,
    db: Store,
    /// One KEK rotation at a time.
    rotating: tokio::sync::Mutex<()>,
}

/// One line of `doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`vault`, `aws`, `kek`, `credential NAME`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found (never a value).
    pub detail: String,
}

/// What `kek rotate` did.
#[derive(Debug, Default, Serialize)]
pub struct RewrapReport {
    /// The KEK every sealed secret is now under.
    pub kek: String,
    /// Its newest version.
    pub version: String,
    /// How many were rewrapped.
    pub rewrapped: usize,
    /// Those that could not be, with why.
    pub failed: Vec<(String, String)>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Stores {
    /// Builds the stores; `env` reads the server's environment (`VAULT_ADDR`, …).
    pub fn new(
        settings: Settings,
        http: HttpClient,
        db: Store,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let kek = settings
            .kek
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(Kek::parse)
            .transpose()
            .map_err(|e| format!("[secrets] kek: {e}"))?;
        let vault = vault::Vault::new(&settings.vault, env, http)?;
        if matches!(kek, Some(Kek::Transit(_))) && vault.is_none() {
            return Err("[secrets] kek is a transit:// key but no Vault address is configured ([secrets.vault] addr, VAULT_ADDR or BAO_ADDR)".into());
        }
        Ok(Stores {
            settings,
            kek,
            vault,
            aws: tokio::sync::OnceCell::new(),
            db,
            rotating: tokio::sync::Mutex::new(()),
        })
    }

    fn vault(&self) -> Result<&vault::Vault, ResolveError> {
        self.vault.as_ref().ok_or_else(|| {
            ResolveError::Invalid(
                "no Vault address is configured ([secrets.vault] addr, VAULT_ADDR or BAO_ADDR)"
                    .into(),
            )
        })
    }

    async fn aws(&self) -> &aws::Aws {
        self.aws
            .get_or_init(|| aws::Aws::load(&self.settings.aws, self.settings.timeout))
            .await
    }

    /// Reads a secret from its store now (no cache), within the configured timeout.
    /// `credential` is the credential's name (a sealed secret opens only for its own).
    pub async fn resolve(
        &self,
        r: &SecretRef,
        credential: &str,
    ) -> Result<Resolution, ResolveError> {
        let limit = match r {
            SecretRef::Exec(_) => self.settings.exec.timeout + Duration::from_secs(1),
            _ => self.settings.timeout,
        };
        match tokio::time::timeout(limit, self.resolve_now(r, credential)).await {
            Ok(r) => r,
            Err(_) => Err(ResolveError::Unavailable(format!(
                "{} did not answer within {}s",
                r.store(),
                limit.as_secs()
            ))),
        }
    }

    async fn resolve_now(
        &self,
        r: &SecretRef,
        credential: &str,
    ) -> Result<Resolution, ResolveError> {
        match r {
            SecretRef::Env(_) => Ok(Resolution {
                secret: r.resolve(&self.settings.file_policy)?,
                version: None,
            }),
            SecretRef::File(_) => {
                let version = r.version_hint().and_then(|t| {
                    t.duration_since(UNIX_EPOCH)
                        .ok()
                        .map(|d| format!("mtime:{}", d.as_millis()))
                });
                Ok(Resolution {
                    secret: r.resolve(&self.settings.file_policy)?,
                    version,
                })
            }
            SecretRef::Exec(argv) => Ok(Resolution {
                secret: exec::run(argv, &self.settings.exec).await?,
                version: None,
            }),
            SecretRef::Vault {
                mount,
                path,
                field,
                version,
            } => {
                let (secret, v) = self.vault()?.kv_read(mount, path, field, *version).await?;
                Ok(Resolution {
                    secret,
                    version: Some(v),
                })
            }
            SecretRef::AwsSm { id, field, stage } => {
                let (secret, v) = self
                    .aws()
                    .await
                    .get_secret(id, field.as_deref(), stage.as_deref())
                    .await?;
                Ok(Resolution {
                    secret,
                    version: Some(v),
                })
            }
            SecretRef::Sealed(id) => self.unseal(id, credential).await,
        }
    }

    /// What a rotation stages from the store: the newest key there, which for Secrets Manager
    /// on `AWSCURRENT` is `AWSPENDING` when that label exists. The flag says the staged key
    /// came from `AWSPENDING` (promotion moves the labels).
    pub async fn read_newest(
        &self,
        r: &SecretRef,
        credential: &str,
    ) -> Result<(Resolution, bool), ResolveError> {
        match r {
            SecretRef::AwsSm { id, field, stage }
                if stage.as_deref().is_none_or(|s| s == "AWSCURRENT") =>
            {
                let pending = SecretRef::AwsSm {
                    id: id.clone(),
                    field: field.clone(),
                    stage: Some("AWSPENDING".into()),
                };
                match self.resolve(&pending, credential).await {
                    // AWSPENDING on the current version is not a new key.
                    Ok(res) => {
                        let current = self.resolve(r, credential).await?;
                        if current.version == res.version {
                            Ok((current, false))
                        } else {
                            Ok((res, true))
                        }
                    }
                    Err(ResolveError::NotFound(_)) => {
                        Ok((self.resolve(r, credential).await?, false))
                    }
                    Err(e) => Err(e),
                }
            }
            SecretRef::Vault {
                mount, path, field, ..
            } => {
                let latest = SecretRef::Vault {
                    mount: mount.clone(),
                    path: path.clone(),
                    field: field.clone(),
                    version: None,
                };
                Ok((self.resolve(&latest, credential).await?, false))
            }
            _ => Ok((self.resolve(r, credential).await?, false)),
        }
    }

    /// Reads the key a reference held at a past `version` (a KV version, a Secrets Manager
    /// version id), for `credential verify --old`; other stores keep no past versions.
    pub async fn read_version(
        &self,
        r: &SecretRef,
        credential: &str,
        version: &str,
    ) -> Result<Resolution, ResolveError> {
        match r {
            SecretRef::Vault {
                mount, path, field, ..
            } => {
                let v = version.parse::<u64>().map_err(|_| {
                    ResolveError::Invalid(format!("`{version}` is not a KV version"))
                })?;
                let old = SecretRef::Vault {
                    mount: mount.clone(),
                    path: path.clone(),
                    field: field.clone(),
                    version: Some(v),
                };
                self.resolve(&old, credential).await
            }
            SecretRef::AwsSm { id, field, .. } => {
                let (secret, v) = tokio::time::timeout(
                    self.settings.timeout,
                    self.aws()
                        .await
                        .get_secret_at(id, field.as_deref(), None, Some(version)),
                )
                .await
                .map_err(|_| ResolveError::Unavailable("aws-sm did not answer in time".into()))??;
                Ok(Resolution {
                    secret,
                    version: Some(v),
                })
            }
            SecretRef::Sealed(_) => self.resolve(r, credential).await,
            other => Err(ResolveError::Invalid(format!(
                "{} keeps no earlier versions",
                other.store()
            ))),
        }
    }

    /// Moves `AWSCURRENT` of a Secrets Manager secret to `new_version`.
    pub async fn promote_aws_version(
        &self,
        id: &str,
        new_version: &str,
        old_version: Option<&str>,
    ) -> Result<(), ResolveError> {
        tokio::time::timeout(
            self.settings.timeout,
            self.aws()
                .await
                .promote_version(id, new_version, old_version),
        )
        .await
        .map_err(|_| ResolveError::Unavailable("aws-sm did not answer in time".into()))?
    }

    /// Deletes a sealed secret (a rotated-out key confirmed dead).
    pub async fn destroy_sealed(&self, id: &str) -> Result<bool, ResolveError> {
        self.db
            .delete_sealed(id)
            .await
            .map_err(|e| ResolveError::Unavailable(format!("the database failed: {e}")))
    }

    async fn unseal(&self, id: &str, credential: &str) -> Result<Resolution, ResolveError> {
        let row = self
            .db
            .get_sealed(id)
            .await
            .map_err(|e| ResolveError::Unavailable(format!("the database failed: {e}")))?
            .ok_or_else(|| ResolveError::NotFound(format!("sealed:{id} does not exist")))?;
        if row.credential != credential {
            return Err(ResolveError::Refused(format!(
                "sealed:{id} belongs to another credential"
            )));
        }
        let kek = Kek::parse(&row.kek).map_err(ResolveError::Invalid)?;
        let dk = self.unwrap_key(&kek, &row).await?;
        let plain = sealed::aead_open(
            &dk,
            &row.nonce,
            &sealed::secret_aad(id, credential),
            &row.ciphertext,
        )
        .ok_or_else(|| {
            ResolveError::Refused(format!(
                "sealed:{id} does not open: its ciphertext or data key was altered"
            ))
        })?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| ResolveError::Invalid(format!("sealed:{id} is not UTF-8")))?;
        Ok(Resolution {
            secret: airlock_secrets::value_to_secret(text, &format!("sealed:{id}"))?,
            version: Some(format!("{}@{}", row.kek, row.kek_version)),
        })
    }

    async fn unwrap_key(
        &self,
        kek: &Kek,
        row: &SealedRow,
    ) -> Result<Zeroizing<Vec<u8>>, ResolveError> {
        let named = |e: ResolveError| match e {
            // Name the KEK in every failure: it is what the operator must look at.
            ResolveError::Refused(m) => ResolveError::Refused(format!("KEK {kek} refused: {m}")),
            ResolveError::NotFound(m) => ResolveError::Refused(format!("KEK {kek}: {m}")),
            ResolveError::Unavailable(m) => {
                ResolveError::Unavailable(format!("KEK {kek} unreachable: {m}"))
            }
            ResolveError::Invalid(m) => ResolveError::Invalid(format!("KEK {kek}: {m}")),
        };
        match kek {
            Kek::Keyfile(p) => {
                Keyfile::load(p)?.unwrap(p, &row.id, &row.kek_version, &row.wrapped_key)
            }
            Kek::Transit(k) => self
                .vault()?
                .transit_decrypt(k, &row.wrapped_key)
                .await
                .map_err(named),
            Kek::AwsKms(k) => self
                .aws()
                .await
                .kms_decrypt(k, &row.id, &row.wrapped_key)
                .await
                .map_err(named),
        }
    }

    async fn wrap_key(
        &self,
        kek: &Kek,
        id: &str,
        dk: &[u8],
    ) -> Result<(Vec<u8>, String), ResolveError> {
        match kek {
            Kek::Keyfile(p) => Keyfile::load(p)?.wrap(id, dk),
            Kek::Transit(k) => self.vault()?.transit_encrypt(k, dk).await.map_err(|e| {
                ResolveError::Refused(format!("KEK {kek} cannot wrap a data key: {e}"))
            }),
            // A data key for KMS always comes from KMS (`new_data_key`): a plaintext key is
            // never put in a request.
            Kek::AwsKms(_) => Err(ResolveError::Invalid(format!(
                "KEK {kek}: data keys are generated by KMS, not wrapped"
            ))),
        }
    }

    /// A fresh data key and its wrapped form under `kek`.
    async fn new_data_key(
        &self,
        kek: &Kek,
        id: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>, String), ResolveError> {
        if let Kek::AwsKms(k) = kek {
            return self
                .aws()
                .await
                .kms_generate_data_key(k, id)
                .await
                .map_err(|e| {
                    ResolveError::Refused(format!("KEK {kek} cannot make a data key: {e}"))
                });
        }
        let dk = sealed::random_key();
        let (wrapped, version) = self.wrap_key(kek, id, &dk[..]).await?;
        Ok((Zeroizing::new(dk.to_vec()), wrapped, version))
    }

    /// Seals `secret` for `credential` under the configured KEK; the row is not stored yet
    /// (the caller stores it with the credential, in one transaction).
    pub async fn seal(&self, credential: &str, secret: &Secret) -> Result<SealedRow, ResolveError> {
        let kek = self.kek.clone().ok_or_else(|| {
            ResolveError::Invalid(
                "no KEK is configured: set [secrets] kek to transit://KEY, aws-kms://KEY_ID or keyfile:/path to seal secrets".into(),
            )
        })?;
        let id = format!("s_{}", airlock_secrets::random_token(12));
        let (dk, wrapped_key, kek_version) = self.new_data_key(&kek, &id).await?;
        let (nonce, ciphertext) = sealed::seal_value(&id, credential, secret, &dk);
        let row = SealedRow {
            id,
            credential: credential.into(),
            kek: kek.to_string(),
            kek_version,
            wrapped_key,
            nonce: nonce.to_vec(),
            ciphertext,
            created_at: now_ms(),
            rewrapped_at: None,
        };
        // Stored only once it is known to open again.
        let back = self.unwrap_key(&kek, &row).await?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&back[..], &dk[..])) {
            return Err(ResolveError::Refused(format!(
                "KEK {kek} returned a different data key than it wrapped; nothing was stored"
            )));
        }
        Ok(row)
    }

    /// `kek rotate`: adds a new version to the configured KEK (key file: a new line; Transit:
    /// `keys/KEY/rotate`; KMS rotates its own key material) and rewraps every sealed data key
    /// under it, moving secrets sealed under an older KEK to the configured one. The secrets
    /// themselves are not touched.
    pub async fn rotate_kek(&self) -> Result<RewrapReport, ResolveError> {
        let kek = self
            .kek
            .clone()
            .ok_or_else(|| ResolveError::Invalid("no KEK is configured ([secrets] kek)".into()))?;
        let _one = self.rotating.lock().await;
        let mut version = String::new();
        match &kek {
            Kek::Keyfile(p) => {
                let n = Keyfile::add_version(p).map_err(ResolveError::Refused)?;
                version = format!("v{n}");
            }
            Kek::Transit(k) => self
                .vault()?
                .transit_rotate(k)
                .await
                .map_err(|e| ResolveError::Refused(format!("KEK {kek} cannot rotate: {e}")))?,
            Kek::AwsKms(_) => {}
        }
        let rows = self
            .db
            .list_sealed()
            .await
            .map_err(|e| ResolveError::Unavailable(format!("the database failed: {e}")))?;
        let mut report = RewrapReport {
            kek: kek.to_string(),
            ..Default::default()
        };
        for row in rows {
            match self.rewrap_one(&kek, &row).await {
                Ok(v) => {
                    version = v;
                    report.rewrapped += 1;
                }
                Err(e) => report.failed.push((row.id.clone(), e.to_string())),
            }
        }
        report.version = version;
        Ok(report)
    }

    async fn rewrap_one(&self, target: &Kek, row: &SealedRow) -> Result<String, ResolveError> {
        let from = Kek::parse(&row.kek).map_err(ResolveError::Invalid)?;
        // Moving into KMS takes a data key KMS made: the secret is sealed again under it.
        let mut resealed: Option<([u8; 12], Vec<u8>)> = None;
        let (wrapped, version) = match (&from, target) {
            (Kek::Transit(a), Kek::Transit(b)) if a == b => {
                self.vault()?.transit_rewrap(b, &row.wrapped_key).await?
            }
            (Kek::AwsKms(a), Kek::AwsKms(b)) => {
                self.aws()
                    .await
                    .kms_reencrypt(a, b, &row.id, &row.wrapped_key)
                    .await?
            }
            (_, Kek::AwsKms(_)) => {
                let old = self.unwrap_key(&from, row).await?;
                let plain = sealed::aead_open(
                    &old,
                    &row.nonce,
                    &sealed::secret_aad(&row.id, &row.credential),
                    &row.ciphertext,
                )
                .ok_or_else(|| ResolveError::Refused(format!("sealed:{} does not open", row.id)))?;
                let (dk, w, v) = self.new_data_key(target, &row.id).await?;
                let text = String::from_utf8(plain.to_vec()).map_err(|e| {
                    zeroize::Zeroize::zeroize(&mut e.into_bytes());
                    ResolveError::Invalid("not UTF-8".into())
                })?;
                let secret = Secret::new(text);
                resealed = Some(sealed::seal_value(&row.id, &row.credential, &secret, &dk));
                (w, v)
            }
            _ => {
                let dk = self.unwrap_key(&from, row).await?;
                self.wrap_key(target, &row.id, &dk).await?
            }
        };
        // Stored only once the new wrapping is known to open (and to the same secret).
        {
            let mut check = row.clone();
            check.kek = target.to_string();
            check.kek_version.clone_from(&version);
            check.wrapped_key.clone_from(&wrapped);
            if let Some((nonce, ct)) = &resealed {
                check.nonce = nonce.to_vec();
                check.ciphertext.clone_from(ct);
            }
            let dk = self.unwrap_key(target, &check).await?;
            sealed::aead_open(
                &dk,
                &check.nonce,
                &sealed::secret_aad(&check.id, &check.credential),
                &check.ciphertext,
            )
            .ok_or_else(|| {
                ResolveError::Refused(format!(
                    "KEK {target}: the rewrapped key does not open sealed:{}; nothing was changed",
                    row.id
                ))
            })?;
        }
        let mut new = row.clone();
        new.kek = target.to_string();
        new.kek_version.clone_from(&version);
        new.wrapped_key = wrapped;
        if let Some((nonce, ciphertext)) = resealed {
            new.nonce = nonce.to_vec();
            new.ciphertext = ciphertext;
        }
        new.rewrapped_at = Some(now_ms());
        let stored = self
            .db
            .rewrap_sealed(&row.wrapped_key, &new)
            .await
            .map_err(|e| ResolveError::Unavailable(format!("the database failed: {e}")))?;
        if !stored {
            return Err(ResolveError::Unavailable(
                "changed while being rewrapped; run kek rotate again".into(),
            ));
        }
        Ok(version)
    }

    /// `doctor`: every configured store answers and the KEK wraps and unwraps.
    pub async fn checks(&self) -> Vec<Check> {
        let mut out = Vec::new();
        if let Some(v) = &self.vault {
            let r = tokio::time::timeout(self.settings.timeout, v.check()).await;
            out.push(match r {
                Ok(Ok(d)) => Check {
                    name: format!("vault {}", v.addr()),
                    ok: true,
                    detail: d,
                },
                Ok(Err(e)) => Check {
                    name: format!("vault {}", v.addr()),
                    ok: false,
                    detail: e.to_string(),
                },
                Err(_) => Check {
                    name: format!("vault {}", v.addr()),
                    ok: false,
                    detail: "did not answer in time".into(),
                },
            });
        }
        if let Some(kek) = &self.kek {
            let id = "doctor";
            let r = async {
                if let Kek::AwsKms(k) = kek {
                    self.aws().await.kms_check(k).await?;
                }
                let (dk, w, v) = self.new_data_key(kek, id).await?;
                let row = SealedRow {
                    id: id.into(),
                    credential: String::new(),
                    kek: kek.to_string(),
                    kek_version: v.clone(),
                    wrapped_key: w,
                    nonce: Vec::new(),
                    ciphertext: Vec::new(),
                    created_at: 0,
                    rewrapped_at: None,
                };
                let back = self.unwrap_key(kek, &row).await?;
                if back[..] != dk[..] {
                    return Err(ResolveError::Refused("unwrapped a different key".into()));
                }
                Ok(v)
            };
            let r = tokio::time::timeout(self.settings.timeout * 3, r).await;
            out.push(Check {
                name: format!("kek {kek}"),
                ok: matches!(r, Ok(Ok(_))),
                detail: match r {
                    Ok(Ok(v)) => format!("wraps and unwraps (version {v})"),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "did not answer in time".into(),
                },
            });
        }
        out
    }
}
