//! Who may do what: admin keys (`/admin-keys`) and service accounts (`/service-accounts`), and
//! the scope that bounds what a developer's grant or a service account may mint. Never a key:
//! a key is shown once, when it is created.

use serde::{Deserialize, Serialize};

/// What a bounded minter (a developer's grant, a service account, a trust policy) may put in a
/// token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// The only environment its tokens may be for.
    pub env: String,
    /// Model globs its tokens may allow (`*`: any).
    pub models: Vec<String>,
    /// Credentials its tokens may use; empty: any credential of `env`.
    #[serde(default)]
    pub credentials: Vec<String>,
    /// Longest lifetime of its tokens, seconds.
    pub max_ttl_secs: u64,
    /// The project every token it mints is accounted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// An admin key (its secret is never shown again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminKey {
    /// The public id part of the key.
    pub id: String,
    /// Whose it is.
    pub name: String,
    /// `owner`, `admin`, `auditor`, `developer` or `viewer`.
    pub role: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds, when revoked.
    pub revoked_at: Option<i64>,
    /// A developer key's grant.
    pub grant: Option<Scope>,
    /// The stored grant could not be read (the database was edited by hand): the key is
    /// listed so that it can be revoked, and its grant is not shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grant_unreadable: bool,
}

/// `GET /admin-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminKeys {
    /// Every admin key, oldest first.
    pub admin_keys: Vec<AdminKey>,
}

/// A service account (its key is never shown again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// The public id part of its key.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What its tokens may be (absent only when the stored scope cannot be read: the database
    /// was edited by hand; the account is listed so that it can be revoked).
    pub scope: Option<Scope>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The admin key that created it.
    pub created_by: String,
    /// Unix milliseconds.
    pub last_used_at: Option<i64>,
    /// Unix milliseconds, when revoked.
    pub revoked_at: Option<i64>,
}

/// `GET /service-accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccounts {
    /// Every service account.
    pub service_accounts: Vec<ServiceAccount>,
}

/// The answer to revoking an admin key or a service account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevoked {
    /// The id revoked.
    pub revoked: String,
    /// The same id (service accounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tokens it had minted that were revoked with it.
    pub tokens_revoked: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_with_a_field_this_version_does_not_know_is_refused() {
        let ok: Result<Scope, _> =
            serde_json::from_str(r#"{"env":"dev","models":["*"],"max_ttl_secs":60}"#);
        assert!(ok.is_ok());
        let more: Result<Scope, _> =
            serde_json::from_str(r#"{"env":"dev","models":["*"],"max_ttl_secs":60,"admin":true}"#);
        assert!(more.is_err(), "a field one side would drop silently");
    }
}
