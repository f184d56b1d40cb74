//! The credentials the router chooses from, compiled from the store, and their secrets.
//!
//! A secret is read from its reference when first needed and kept in memory (never on disk);
//! a `file:` reference is re-read when the file changes. When the key behind a reference
//! changes, its new fingerprint is written to the inventory.

use crate::providers::ProviderKind;
use airlock_secrets::{HmacKey, ReferencePolicy, ResolveError, Secret, SecretRef};
use airlock_store::CredentialRow;
use airlock_token::glob::Glob;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A usable credential.
pub struct Credential {
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: ProviderKind,
    /// Environment tag.
    pub env: String,
    /// Base URL (default for the provider when none was given).
    pub base_url: String,
    /// Models served.
    pub models: Vec<Glob>,
    /// Lower first.
    pub priority: i64,
    /// Suspended credentials are never chosen.
    pub suspended: bool,
    reference: SecretRef,
    cached: Mutex<Option<Cached>>,
    fingerprint: Mutex<Option<String>>,
}

struct Cached {
    secret: Arc<Secret>,
    checked: Instant,
    version: Option<SystemTime>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("env", &self.env)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// A resolved secret with its fingerprint (the caller records a changed fingerprint).
pub struct Resolved {
    /// The key.
    pub secret: Arc<Secret>,
    /// Set when this resolution saw a key different from the last one known.
    pub changed: Option<(String, String)>,
    /// Whether the secret was read from its reference now (not from memory).
    pub fresh: bool,
}

impl Credential {
    /// Compiles a stored row.
    pub fn from_row(row: &CredentialRow) -> Result<Self, String> {
        let provider = ProviderKind::parse(&row.provider)
            .ok_or_else(|| format!("unknown provider {}", row.provider))?;
        let base_url = row
            .base_url
            .clone()
            .or_else(|| provider.default_base_url().map(str::to_string))
            .ok_or_else(|| format!("credential {} needs a base URL", row.name))?;
        let models = airlock_token::glob::parse_list(&row.models).map_err(|e| e.to_string())?;
        let reference = SecretRef::parse(&row.secret_ref).map_err(|e| e.to_string())?;
        Ok(Credential {
            name: row.name.clone(),
            provider,
            env: row.env.clone(),
            base_url,
            models,
            priority: row.priority,
            suspended: row.suspended,
            reference,
            cached: Mutex::new(None),
            fingerprint: Mutex::new(row.fingerprint.clone()),
        })
    }

    /// Whether this credential serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|g| g.matches(model))
    }

    /// The secret, from memory when fresh.
    pub fn secret(
        &self,
        fp_key: &HmacKey,
        policy: &ReferencePolicy,
        file_check: Duration,
    ) -> Result<Resolved, ResolveError> {
        let now = Instant::now();
        let mut guard = self
            .cached
            .lock()
            .map_err(|_| ResolveError::Unavailable("secret cache poisoned".into()))?;
        if let Some(c) = guard.as_mut() {
            if now.duration_since(c.checked) < file_check
                || matches!(self.reference, SecretRef::Env(_))
            {
                return Ok(Resolved {
                    secret: c.secret.clone(),
                    changed: None,
                    fresh: false,
                });
            }
            let v = self.reference.version_hint();
            if v.is_some() && v == c.version {
                c.checked = now;
                return Ok(Resolved {
                    secret: c.secret.clone(),
                    changed: None,
                    fresh: false,
                });
            }
        }
        let version = self.reference.version_hint();
        let secret = Arc::new(self.reference.resolve(policy)?);
        let fp = secret.fingerprint(fp_key);
        let mut changed = None;
        if let Ok(mut known) = self.fingerprint.lock() {
            if known.as_deref() != Some(fp.as_str()) {
                changed = Some((fp.clone(), secret.last4()));
                *known = Some(fp);
            }
        }
        *guard = Some(Cached {
            secret: secret.clone(),
            checked: now,
            version,
        });
        Ok(Resolved {
            secret,
            changed,
            fresh: true,
        })
    }

    /// The reference (safe to show).
    pub fn reference(&self) -> &SecretRef {
        &self.reference
    }
}

/// All credentials, sorted by priority then name.
#[derive(Default)]
pub struct CredentialSet {
    /// The credentials.
    pub all: Vec<Arc<Credential>>,
}

impl CredentialSet {
    /// Compiles rows; a row that cannot be compiled is skipped with an error log (it was
    /// validated on the way in, so this only happens after a manual database edit).
    pub fn from_rows(rows: &[CredentialRow]) -> Self {
        let mut all: Vec<Arc<Credential>> = rows
            .iter()
            .filter_map(|r| match Credential::from_row(r) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    tracing::error!(credential = %r.name, error = %e, "credential skipped");
                    None
                }
            })
            .collect();
        all.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        CredentialSet { all }
    }

    /// Looks up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Credential>> {
        self.all.iter().find(|c| c.name == name)
    }
}
