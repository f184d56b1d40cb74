//! Incident mode (`/incident`): the lockdown that refuses every token issued so far, and the
//! report of who used which credential since a time (the blast radius).

use serde::{Deserialize, Serialize};

/// `POST /incident/lockdown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockdownRequest {
    /// Credentials to suspend: `all`, environment names or credential names.
    #[serde(default)]
    pub suspend: Vec<String>,
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The answer to a lockdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockdown {
    /// The new root key: tokens signed by any key below it are refused.
    pub root_key_id: u32,
    /// Its public key, `ed25519/<hex>`.
    pub public_key: String,
    /// What is refused, in words.
    pub tokens_refused: String,
    /// The credentials suspended.
    pub suspended: Vec<String>,
    /// Unix milliseconds.
    pub at: i64,
}

/// `GET /incident/report?since=T[&until=T]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Unix milliseconds.
    pub since: i64,
    /// Unix milliseconds.
    pub until: i64,
    /// The window's length.
    pub window_secs: i64,
    /// Every credential, with its use in the window.
    pub credentials: Vec<CredentialUse>,
}

/// One credential's use in the window, against its own baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialUse {
    /// Its name.
    pub credential: String,
    /// Its provider.
    pub provider: String,
    /// Its environment.
    pub env: String,
    /// Whether it is suspended now.
    pub suspended: bool,
    /// Keyed fingerprint of its key.
    pub fingerprint: Option<String>,
    /// Requests served in the window.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Spend in millionths of a dollar.
    pub cost_micros: i64,
    /// The average of the seven windows of the same length before `since`.
    pub baseline: Baseline,
    /// `requests` over the baseline's (none without a baseline).
    pub requests_vs_baseline: Option<f64>,
    /// Who used it.
    pub identities: Vec<IdentityUse>,
    /// With which tokens.
    pub tokens: Vec<TokenUse>,
    /// From where.
    pub client_ips: Vec<AddressUse>,
    /// For which models.
    pub models: Vec<ModelUse>,
    /// Identities not seen with it in the 30 days before `since`.
    pub new_identities: Vec<String>,
    /// Addresses not seen with it in the 30 days before `since`.
    pub new_client_ips: Vec<String>,
    /// Its last rotation.
    pub rotation: LastRotation,
}

/// A credential's usual volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Requests per window.
    pub requests_per_window: f64,
    /// Spend per window, millionths of a dollar.
    pub cost_micros_per_window: f64,
    /// How many windows it averages (7).
    pub windows: u32,
}

/// An identity's use of a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityUse {
    /// The token subject (`-` when none).
    pub subject: String,
    /// Requests.
    pub requests: i64,
    /// Not seen with this credential in the 30 days before.
    pub first_seen: bool,
}

/// A token's use of a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUse {
    /// `tok_…`.
    pub token_id: String,
    /// Its subject.
    pub subject: String,
    /// Requests.
    pub requests: i64,
}

/// A client address's use of a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressUse {
    /// The address (`-` when unknown).
    pub ip: String,
    /// Requests.
    pub requests: i64,
    /// Not seen with this credential in the 30 days before.
    pub first_seen: bool,
}

/// A model's use of a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUse {
    /// The model (`-` when none).
    pub model: String,
    /// Requests.
    pub requests: i64,
}

/// Where a credential's last rotation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRotation {
    /// `staged`, `failed`, `promoted`, `confirmed`, or `never rotated`.
    pub state: String,
    /// Unix milliseconds.
    #[serde(default)]
    pub promoted_at: Option<i64>,
    /// Unix milliseconds.
    #[serde(default)]
    pub confirmed_at: Option<i64>,
}
