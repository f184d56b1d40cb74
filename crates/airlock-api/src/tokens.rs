//! Tokens (`/tokens`): what was minted, for whom, and whether it was revoked. Never the token
//! itself: the server keeps only its metadata.

use serde::{Deserialize, Serialize};

/// A minted token's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// `tok_…`.
    pub id: String,
    /// Whom it was minted for.
    pub subject: String,
    /// Its environment.
    pub env: String,
    /// Model globs.
    pub models: Vec<String>,
    /// Credential names (empty: any of the environment).
    pub credentials: Vec<String>,
    /// The root key that signed it.
    pub key_id: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix milliseconds, when revoked.
    pub revoked_at: Option<i64>,
    /// An admin key id, `sa:<id>` (a service account) or `trust:<policy>` (an exchange).
    pub minted_by: String,
    /// The claims of the identity token a trust policy accepted (exchanges only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Value>,
}

/// `GET /tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    /// Live tokens (or all, with `?all=true`), newest first.
    pub tokens: Vec<Token>,
}

/// `DELETE /tokens/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The token id revoked.
    pub revoked: String,
}
