//! Credentials (`/credentials`): the inventory of provider keys. Only what identifies a key
//! (its reference, keyed fingerprint, last four characters, store version) ever appears here,
//! never a key (I1); a new sealed key travels once, in [`NewCredential::secret_value`].

use crate::SecretValue;
use serde::{Deserialize, Serialize};

/// `POST /credentials`. Exactly one of `secret_ref` and `secret_value`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// Unique name, e.g. `openai-prod`.
    pub name: String,
    /// `openai`, `anthropic`, `azure` or `openai-compatible`.
    pub provider: String,
    /// Environment tag.
    pub env: String,
    /// Where the key lives (`vault://…`, `aws-sm://…`, `env:…`, …).
    #[serde(default)]
    pub secret_ref: Option<String>,
    /// Or the key itself, to be sealed under the KEK; the server moves it into a secret at
    /// once and never stores, logs or echoes it.
    #[serde(default)]
    pub secret_value: Option<SecretValue>,
    /// Base URL override.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Model globs (empty: every model).
    #[serde(default)]
    pub models: Vec<String>,
    /// Lower is tried first (default 100).
    #[serde(default)]
    pub priority: Option<i64>,
}

/// A credential as the inventory holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// Unique name.
    pub name: String,
    /// Its provider.
    pub provider: String,
    /// Environment tag.
    pub env: String,
    /// Where the key lives (`sealed:…` for a key sealed by airlock).
    pub secret_ref: String,
    /// Base URL override (none: the provider's).
    pub base_url: Option<String>,
    /// Model globs it serves.
    pub models: Vec<String>,
    /// Lower is tried first.
    pub priority: i64,
    /// Keyed fingerprint of the key.
    pub fingerprint: Option<String>,
    /// Last four characters of the key.
    pub last4: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub rotated_at: Option<i64>,
    /// Unix milliseconds.
    pub last_used_at: Option<i64>,
    /// A suspended credential serves nothing.
    pub suspended: bool,
    /// The version last read from the secret's store.
    pub secret_version: Option<String>,
    /// The key's age against the rotation policy (lists and `show`; not in `add`'s answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<KeyAge>,
}

/// A key's age against `rotation.max_age_days`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAge {
    /// Whole days since the key was added or last rotated.
    pub key_age_days: i64,
    /// The policy.
    pub max_age_days: i64,
    /// Older than the policy allows.
    pub overdue: bool,
    /// Where its last rotation stands, in words (`show` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `GET /credentials`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// Every credential, by name.
    pub credentials: Vec<Credential>,
}

/// `GET /credentials/{name}`: the credential, its rotations and who used it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialDetail {
    /// The credential, with its key age.
    #[serde(flatten)]
    pub credential: Credential,
    /// Its last rotations, newest first.
    pub rotations: Vec<Rotation>,
    /// All-time use (requests served).
    pub usage: Totals,
    /// Use over the window asked for.
    pub activity: Activity,
}

/// One rotation of a credential's key: what replaced what and when each step happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rotation {
    /// `rot_…`.
    pub id: String,
    /// Credential name.
    pub credential: String,
    /// `stdin` (a new sealed value), `store` (a new version in the store), `auto` (seen by the
    /// background refresh).
    pub source: String,
    /// `staged`, `failed`, `promoted`, `confirmed`.
    pub state: String,
    /// Why it failed, or what was checked.
    pub reason: Option<String>,
    /// The key replaced: fingerprint, last 4, store version, reference.
    pub old_fingerprint: Option<String>,
    /// Its last 4.
    pub old_last4: Option<String>,
    /// Its store version.
    pub old_version: Option<String>,
    /// The reference that read it.
    pub old_ref: Option<String>,
    /// The new key.
    pub new_fingerprint: Option<String>,
    /// Its last 4.
    pub new_last4: Option<String>,
    /// Its store version.
    pub new_version: Option<String>,
    /// Unix milliseconds.
    pub started_at: i64,
    /// When the provider accepted (or refused) the new key.
    pub tested_at: Option<i64>,
    /// When new requests started using the new key.
    pub promoted_at: Option<i64>,
    /// When the old key was seen dead, with no use of it on record after the promotion.
    pub confirmed_at: Option<i64>,
}

/// Requests and tokens summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
}

/// Use of one credential over a window, from the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// The window, in days up to now.
    pub window_days: u32,
    /// Requests served.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Spend in millionths of a dollar (priced models only).
    pub cost_micros: i64,
    /// Subjects, busiest first (at most 100).
    pub identities: Vec<Count>,
    /// Tokens, busiest first.
    pub tokens: Vec<Count>,
    /// Client addresses, busiest first.
    pub client_ips: Vec<Count>,
}

/// A name with a request count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Subject, token id or address.
    pub name: String,
    /// Requests.
    pub requests: i64,
}

/// `POST /credentials/{name}/suspend` and `/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// The credential.
    pub credential: String,
    /// Whether it is suspended now.
    pub suspended: bool,
}

/// `POST /inventory/match`: which of these values are keys in the inventory (the scanner).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    /// Candidate values (at most 10 000); compared by keyed fingerprint, never stored.
    pub candidates: Vec<SecretValue>,
}

/// The answer to [`MatchRequest`]: per candidate, the credential it is, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matches {
    /// In the order of the candidates.
    pub matches: Vec<Option<String>>,
}

/// `POST /credentials/{name}/verify`: the key read from its store now, then the provider
/// asked to list models with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The credential.
    pub credential: String,
    /// Its provider.
    pub provider: String,
    /// Its environment.
    pub env: String,
    /// The kind of store the key was read from.
    pub store: String,
    /// The reference read.
    pub reference: String,
    /// `ok`, `refused` (the provider said 401/403), `unreachable` (no answer, or one that says
    /// nothing about the key) or `unreadable` (the store).
    pub status: String,
    /// What was seen, in words.
    pub detail: String,
    /// The store version of the key in service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A newer version the store holds (the refresher tests and promotes it by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_has_newer: Option<String>,
    /// Keyed fingerprint of the key in service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Its last four characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last4: Option<String>,
    /// The provider's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

/// `POST /doctor`: every secret store, the KEK, and every credential as `verify` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doctor {
    /// Every check passed.
    pub ok: bool,
    /// The checks, stores first.
    pub checks: Vec<Check>,
}

/// One check of `doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`vault`, `aws`, `kek`, `credential NAME`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found (never a value).
    pub detail: String,
    /// A credential's status (as in [`Verification::status`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A credential's reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `POST /kek/rotate`: a new KEK version, every sealed data key rewrapped under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekRotation {
    /// The KEK every sealed secret is now under.
    pub kek: String,
    /// Its newest version.
    pub version: String,
    /// How many were rewrapped.
    pub rewrapped: u64,
    /// Those that were not: (sealed id, why).
    pub failed: Vec<(String, String)>,
}
