//! Budgets (`/budgets`) and rate limits (`/rate-limits`).

use serde::{Deserialize, Serialize};

/// `POST /rate-limits`: requests and/or tokens per minute on a token, identity, project or
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRateLimit {
    /// `token`, `identity`, `project` or `credential`.
    pub kind: String,
    /// The token id, subject, project or credential name.
    pub key: String,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<i64>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<i64>,
}

/// A rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// `rl_…`.
    pub id: String,
    /// What it is on.
    pub kind: String,
    /// Which one.
    pub key: String,
    /// Requests per minute, when limited.
    pub rpm: Option<i64>,
    /// Tokens per minute, when limited.
    pub tpm: Option<i64>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// `GET /rate-limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// Every rate limit.
    pub rate_limits: Vec<RateLimit>,
}

/// `POST /budgets`: a spend cap per UTC day, calendar month or in total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBudget {
    /// `token`, `identity`, `project` or `credential`.
    pub kind: String,
    /// The token id, subject, project or credential name.
    pub key: String,
    /// `day`, `month` or `total`.
    pub period: String,
    /// The cap in US dollars.
    pub usd: f64,
}

/// A budget and, when the server holds it, its state in the current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// `b_…`.
    pub id: String,
    /// What it is on.
    pub kind: String,
    /// Which one.
    pub key: String,
    /// `day`, `month` or `total`.
    pub period: String,
    /// The cap, nano-dollars.
    pub limit_nanos: i64,
    /// The cap, US dollars as an exact decimal.
    pub limit_usd: String,
    /// Spent in the current period, nano-dollars.
    pub spent_nanos: Option<i64>,
    /// Spent in the current period, US dollars.
    pub spent_usd: Option<String>,
    /// Reserved by requests in flight, nano-dollars.
    pub reserved_nanos: Option<i64>,
    /// Start of the current period (RFC 3339).
    pub period_start: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// `GET /budgets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    /// Every budget.
    pub budgets: Vec<Budget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_rate_limit_refuses_unknown_fields() {
        let ok: Result<NewRateLimit, _> =
            serde_json::from_str(r#"{"kind":"token","key":"t","rpm":5}"#);
        assert_eq!(ok.ok().and_then(|n| n.rpm), Some(5));
        let typo: Result<NewRateLimit, _> =
            serde_json::from_str(r#"{"kind":"token","key":"t","rpn":5}"#);
        assert!(typo.is_err());
    }

    #[test]
    fn an_unset_state_is_null_not_missing() {
        let b = Budget {
            id: "b_1".into(),
            kind: "token".into(),
            key: "t".into(),
            period: "day".into(),
            limit_nanos: 1,
            limit_usd: "0.000000001".into(),
            spent_nanos: None,
            spent_usd: None,
            reserved_nanos: None,
            period_start: None,
            created_at: 0,
        };
        let v = serde_json::to_value(&b).unwrap_or_default();
        assert!(v["spent_nanos"].is_null() && v.get("spent_nanos").is_some());
    }
}
