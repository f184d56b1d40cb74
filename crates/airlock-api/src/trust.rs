//! Trust policies (`/trust-policies`): which identity tokens (GitHub Actions, Kubernetes, any
//! OpenID Connect issuer) are exchanged for which airlock tokens. The same shape as a `[[trust]]`
//! table of `airlock.toml`, so a policy can move between the file and the API unchanged.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A claim condition: an exact value, `{ glob = "refs/heads/*" }` or `{ one_of = [..] }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Condition {
    /// The claim equals this string.
    Exact(String),
    /// The claim is this integer (written unquoted).
    Number(i64),
    /// The claim is this boolean.
    Bool(bool),
    /// `glob` or `one_of`.
    Rule(Rule),
}

/// The table form of a condition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `*` any run, `?` one character.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Any of these exact values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
}

/// What a trust policy grants: the scope of the tokens it mints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyGrant {
    /// Environment (I4).
    pub env: String,
    /// Model globs.
    pub models: Vec<String>,
    /// Credentials (empty: any of the environment).
    #[serde(default)]
    pub credentials: Vec<String>,
    /// Longest token lifetime (default 15m).
    #[serde(default = "default_max_ttl")]
    pub max_ttl: String,
    /// The project the tokens are accounted to.
    #[serde(default)]
    pub project: Option<String>,
}

fn default_max_ttl() -> String {
    "15m".into()
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_subject_claim() -> String {
    "sub".into()
}

/// A trust policy: which identity tokens are exchanged for which airlock tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustPolicy {
    /// Name (recorded on every token it mints: `trust:<name>`).
    pub name: String,
    /// The `iss` claim, exactly (`https://token.actions.githubusercontent.com`).
    pub issuer: String,
    /// The `aud` the token must carry (what the workload asks its platform for).
    pub audience: String,
    /// The JWKS address; default: `jwks_uri` from the issuer's discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Accepted signature algorithms (default RS256, ES256; HMAC is never accepted).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Claim conditions, all of which must hold (at least one).
    pub claims: BTreeMap<String, Condition>,
    /// The claim that names the workload in the token's subject (default `sub`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// What its tokens may do.
    pub grant: PolicyGrant,
}

/// A policy and where it is defined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    /// The policy as written.
    #[serde(flatten)]
    pub policy: TrustPolicy,
    /// `config` (the `[[trust]]` tables) or `api` (added with `trust add`).
    pub source: String,
}

/// `GET /trust-policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustPolicies {
    /// Every policy in force.
    pub trust_policies: Vec<Listed>,
}

/// `DELETE /trust-policies/{name}`: the policy removed, and the tokens it granted revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRemoved {
    /// The policy's name.
    pub removed: String,
    /// The same name.
    pub name: String,
    /// Live tokens it had minted, now revoked.
    pub tokens_revoked: u64,
}
