//! Who may mint which token: the one place tokens are issued ([`issue`]), the scopes that bound
//! what developers, service accounts and trust policies may ask for ([`Scope`]), service
//! accounts (`alk_sa_<id>_<secret>` keys that can only mint, `POST /v1/token`) and a token's
//! revocation of itself (`POST /v1/token/revoke`).
//!
//! Why one file: `issue`, the one function that mints a token, with the checks of every path that
//! reaches it, so all of them are reviewed together.
//!
//! Every path that hands out a token goes through [`issue`]: the server's own limits (TTL,
//! environments, known credentials) are checked there once, and a bounded caller's request is
//! checked against its [`Scope`] before anything is signed. A request that names nothing gets
//! the whole scope; a request may only narrow it.

use crate::credentials::Credentials;
use crate::tokens::Tokens;
use crate::usage::Recorder;
use crate::util::now_ms;
use airlock_providers::dialect::{ApiError, Dialect};
use airlock_secrets::Secret;
use airlock_store::{ServiceAccountRow, TokenRow};
use airlock_token::glob::Glob;
use airlock_token::{MintOptions, Minted, TokenError};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, Request, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What minting needs: the root keys (through the verifier), the credentials (a token may
/// only name credentials of its environment), the store (token, service-account and admin-key
/// rows), the HMAC key (stored key hashes), the audit writer and the server's longest TTL.
pub struct Issuer {
    /// The database.
    pub store: airlock_store::Store,
    /// The verifier (its key ring signs) and the revocations.
    pub tokens: Arc<Tokens>,
    /// The credentials in force.
    pub creds: Arc<Credentials>,
    /// HMAC key for stored key hashes.
    pub hmac: Arc<airlock_secrets::HmacKey>,
    /// The audit writer.
    pub recorder: Recorder,
    /// The longest lifetime the server mints.
    pub max_ttl: Duration,
    /// The lifetime of a token minted without one.
    pub default_ttl: Duration,
}

/// Prefix of service-account keys.
pub const SERVICE_ACCOUNT_PREFIX: &str = "alk_sa_";

/// What a bounded minter (a developer's grant, a service account, a trust policy) may put in a
/// token. Stored as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// The only environment its tokens may be for (I4).
    pub env: String,
    /// Model globs its tokens may allow (`*`: any).
    pub models: Vec<String>,
    /// Credentials its tokens may use; empty: any credential of `env`.
    #[serde(default)]
    pub credentials: Vec<String>,
    /// Longest lifetime of its tokens, seconds.
    pub max_ttl_secs: u64,
    /// The project every token it mints is accounted to (none: the asker may name one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl Scope {
    /// Builds and checks a scope against the server's limits.
    pub fn new(
        app_max_ttl: Duration,
        env: &str,
        models: Vec<String>,
        credentials: Vec<String>,
        max_ttl: Option<Duration>,
    ) -> Result<Scope, String> {
        let s = Scope {
            env: env.to_string(),
            models: if models.is_empty() {
                vec!["*".into()]
            } else {
                models
            },
            credentials,
            // Unsaid, an hour: a bounded minter's key may leak, and what it minted lives on.
            max_ttl_secs: max_ttl
                .unwrap_or(app_max_ttl.min(Duration::from_secs(3600)))
                .as_secs(),
            project: None,
        };
        s.check(app_max_ttl)?;
        Ok(s)
    }

    /// Validates names, patterns and the lifetime.
    pub fn check(&self, app_max_ttl: Duration) -> Result<(), String> {
        if !crate::util::valid_name(&self.env) {
            return Err(format!(
                "environment `{}` must be 1-64 characters of letters, digits and -_.",
                self.env
            ));
        }
        if self.models.is_empty() {
            return Err("a scope needs at least one model pattern ('*' for every model)".into());
        }
        // One pattern per entry (no comma lists): what is checked is what is minted.
        for m in &self.models {
            Glob::new(m).map_err(|e| e.to_string())?;
        }
        if let Some(c) = self
            .credentials
            .iter()
            .find(|c| !crate::util::valid_name(c))
        {
            return Err(format!("`{c}` is not a credential name"));
        }
        if let Some(p) = self
            .project
            .as_deref()
            .filter(|p| !crate::util::valid_name(p))
        {
            return Err(format!(
                "project `{p}` must be 1-64 characters of letters, digits and -_."
            ));
        }
        if self.max_ttl_secs == 0 || Duration::from_secs(self.max_ttl_secs) > app_max_ttl {
            return Err(format!(
                "max ttl must be between 1s and this server's maximum of {}",
                humantime::format_duration(app_max_ttl)
            ));
        }
        Ok(())
    }

    /// One line for people: `prod: gpt-* via any credential, up to 15m`.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} via {}, up to {}",
            self.env,
            self.models.join(","),
            if self.credentials.is_empty() {
                "any credential".to_string()
            } else {
                self.credentials.join(",")
            },
            humantime::format_duration(Duration::from_secs(self.max_ttl_secs))
        )
    }
}

/// Items as given, with comma lists split (`--model a,b` and `--model a --model b` alike).
pub fn split_list(items: Vec<String>) -> Vec<String> {
    items
        .iter()
        .flat_map(|i| i.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether every model `asked` matches is also matched by `allowed`. Decided exactly for the
/// forms people write (identical patterns, a literal name, `*`, a literal prefix then `*`);
/// anything else is refused rather than guessed.
pub fn glob_within(asked: &str, allowed: &Glob) -> bool {
    let a = allowed.as_str();
    if a == "*" || a == asked {
        return true;
    }
    if !asked.contains(['*', '?']) {
        return allowed.matches(asked);
    }
    match a.strip_suffix('*') {
        Some(prefix) if !prefix.contains(['*', '?']) => {
            asked.starts_with(prefix) && !asked[..prefix.len()].contains(['*', '?'])
        }
        _ => false,
    }
}

/// What the caller asks for; anything left out is filled from the bound (or the server's
/// defaults when unbounded).
#[derive(Debug, Default, Clone)]
pub struct Ask {
    /// Environment.
    pub env: Option<String>,
    /// Model globs.
    pub models: Vec<String>,
    /// Credential names.
    pub credentials: Vec<String>,
    /// Lifetime.
    pub ttl: Option<Duration>,
    /// Project.
    pub project: Option<String>,
}

/// Who the token is for and where it came from.
pub struct Origin {
    /// The token's subject.
    pub subject: String,
    /// `tokens.minted_by`: an admin key id, `sa:<id>`, `trust:<policy>`.
    pub minted_by: String,
    /// Claims that satisfied a trust policy.
    pub claims: Option<serde_json::Value>,
}

/// Why a token was not issued.
#[derive(Debug)]
pub enum IssueError {
    /// The request is malformed or impossible on this server.
    Invalid(String),
    /// The request reaches beyond the caller's scope.
    OutOfScope(String),
    /// The database or the signer failed.
    Failed(String),
}

impl IssueError {
    /// The admin API's rendering (OpenAI dialect).
    pub fn render(&self) -> Response {
        let (status, code, msg) = match self {
            IssueError::Invalid(m) => (StatusCode::BAD_REQUEST, "invalid_request", m),
            IssueError::OutOfScope(m) => (StatusCode::FORBIDDEN, "outside_scope", m),
            IssueError::Failed(m) => (StatusCode::SERVICE_UNAVAILABLE, "mint_failed", m),
        };
        ApiError::new(status, code, msg.clone()).render(Dialect::OpenAi)
    }
}

/// A token issued.
pub struct Issued {
    /// The token.
    pub minted: Minted,
    /// What was stored about it.
    pub row: TokenRow,
    /// Things the caller should know (no credential can serve it yet, …).
    pub warnings: Vec<String>,
    /// The project it is accounted to.
    pub project: Option<String>,
}

impl Issued {
    /// The JSON the admin API and `POST /v1/token` answer with.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "token": self.minted.token,
            "id": self.minted.id,
            "expires_at": airlock_token::rfc3339(self.minted.expires_at),
            "expires_at_unix": self.minted.expires_at,
            "env": self.row.env,
            "subject": self.row.subject,
            "models": self.row.models,
            "credentials": self.row.credentials,
            "project": self.project,
            "warnings": self.warnings,
        })
    }
}

/// Issues a token for `ask`, within `bound` when the caller is bounded, and records it.
pub async fn issue(
    app: &Issuer,
    bound: Option<&Scope>,
    ask: Ask,
    origin: Origin,
) -> Result<Issued, IssueError> {
    use IssueError::{Invalid, OutOfScope};
    let server_max = app.max_ttl;
    let mut max_ttl = server_max;
    if let Some(b) = bound {
        max_ttl = max_ttl.min(Duration::from_secs(b.max_ttl_secs));
    }
    let default_ttl = app.default_ttl.min(max_ttl);
    let ttl = ask.ttl.unwrap_or(default_ttl);
    if ttl > max_ttl {
        let whose = if bound.is_some() && max_ttl < server_max {
            "your scope's"
        } else {
            "this server's"
        };
        let msg = format!(
            "ttl {} exceeds {whose} maximum of {}",
            humantime::format_duration(ttl),
            humantime::format_duration(max_ttl)
        );
        return Err(if bound.is_some() && max_ttl < server_max {
            OutOfScope(msg)
        } else {
            Invalid(msg)
        });
    }
    let set = app.creds.load();
    let env = match (ask.env, bound) {
        (Some(e), Some(b)) if e != b.env => {
            return Err(OutOfScope(format!(
                "environment `{e}` is outside your scope (only `{}`)",
                b.env
            )))
        }
        (Some(e), _) => e,
        (None, Some(b)) => b.env.clone(),
        (None, None) => {
            let envs: BTreeSet<&str> = set.all.iter().map(|c| c.env.as_str()).collect();
            match envs.len() {
                1 => envs.into_iter().next().unwrap_or_default().to_string(),
                0 => {
                    return Err(Invalid(
                        "no credentials exist yet; add one first (airlock credential add)".into(),
                    ))
                }
                _ => {
                    return Err(Invalid(format!(
                        "several environments exist ({}); choose one with --env",
                        envs.into_iter().collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
    };
    let models = match bound {
        None if ask.models.is_empty() => vec!["*".to_string()],
        None => ask.models,
        Some(b) if ask.models.is_empty() => b.models.clone(),
        Some(b) => {
            let allowed = airlock_token::glob::parse_list(&b.models)
                .map_err(|e| IssueError::Failed(format!("the scope itself is invalid: {e}")))?;
            for m in &ask.models {
                // Each asked entry must be one valid pattern (no comma lists) before it is
                // compared: the check and the token must see the same patterns.
                let g = Glob::new(m).map_err(|e| Invalid(e.to_string()))?;
                if !allowed.iter().any(|a| glob_within(g.as_str(), a)) {
                    return Err(OutOfScope(format!(
                        "model pattern `{m}` is outside your scope ({}); ask for models it covers",
                        b.models.join(", ")
                    )));
                }
            }
            ask.models.iter().map(|m| m.trim().to_string()).collect()
        }
    };
    let credentials = match bound {
        Some(b) if !b.credentials.is_empty() => {
            if ask.credentials.is_empty() {
                b.credentials.clone()
            } else if let Some(c) = ask.credentials.iter().find(|c| !b.credentials.contains(c)) {
                return Err(OutOfScope(format!(
                    "credential `{c}` is outside your scope ({})",
                    b.credentials.join(", ")
                )));
            } else {
                ask.credentials
            }
        }
        _ => ask.credentials,
    };
    for name in &credentials {
        match set.get(name) {
            // A scope may name a credential that is not added yet; a token cannot.
            None => return Err(Invalid(format!("unknown credential `{name}`"))),
            Some(cr) if cr.env != env => {
                return Err(Invalid(format!(
                "credential `{name}` is in environment `{}`, not `{env}`; environments never cross",
                cr.env
            )))
            }
            Some(_) => {}
        }
    }
    let project = match (ask.project, bound.and_then(|b| b.project.clone())) {
        (Some(p), Some(b)) if p != b => {
            return Err(OutOfScope(format!(
                "project `{p}` is outside your scope (only `{b}`)"
            )))
        }
        (_, Some(b)) => Some(b),
        // A bounded minter names no project its grant does not: it could put its use on
        // another team's budget.
        (Some(p), None) if bound.is_some() => {
            return Err(OutOfScope(format!(
                "project `{p}` is outside your scope (it names no project)"
            )))
        }
        (Some(p), None) if !crate::util::valid_name(&p) => {
            return Err(Invalid(format!(
                "project `{p}` must be 1-64 characters of letters, digits and -_."
            )))
        }
        (p, None) => p,
    };
    let opts = MintOptions {
        subject: origin.subject,
        env: env.clone(),
        models: models.clone(),
        credentials: credentials.clone(),
        ttl,
        project: project.clone(),
    };
    let minted =
        match airlock_token::mint(app.tokens.verifier.load().keys(), &opts, SystemTime::now()) {
            Ok(t) => t,
            Err(TokenError::Invalid(e)) => return Err(Invalid(e)),
            Err(e) => return Err(IssueError::Failed(e.to_string())),
        };
    let row = TokenRow {
        id: minted.id.clone(),
        subject: opts.subject.clone(),
        env: env.clone(),
        models,
        credentials,
        key_id: i64::from(minted.key_id),
        created_at: now_ms(),
        expires_at: minted.expires_at as i64,
        revoked_at: None,
        minted_by: origin.minted_by,
        claims: origin.claims,
    };
    app.store.insert_token(&row).await.map_err(|e| {
        tracing::error!(error = %e, "cannot record a minted token");
        IssueError::Failed("the database failed; see the server log".into())
    })?;
    let mut warnings = Vec::new();
    if !set.all.iter().any(|cr| cr.env == env) {
        warnings.push(format!(
            "no credential is tagged `{env}` yet, so this token cannot reach any model"
        ));
    }
    tracing::info!(token_id = %minted.id, env = %env, minted_by = %row.minted_by, "token minted");
    Ok(Issued {
        minted,
        row,
        warnings,
        project,
    })
}

// ---- service accounts ------------------------------------------------------------------

/// Creates a service account; returns its row and the key (shown once).
pub async fn create_service_account(
    app: &Issuer,
    name: &str,
    scope: &Scope,
    created_by: &str,
) -> Result<(ServiceAccountRow, String), airlock_store::StoreError> {
    let id = airlock_secrets::random_token(6);
    let secret = zeroize::Zeroizing::new(airlock_secrets::random_token(24));
    let row = ServiceAccountRow {
        id: id.clone(),
        name: name.to_string(),
        scope: serde_json::to_value(scope).unwrap_or_default(),
        hash: app.hmac.key_hash(secret.as_bytes()),
        created_at: now_ms(),
        created_by: created_by.to_string(),
        last_used_at: None,
        revoked_at: None,
    };
    app.store.insert_service_account(&row).await?;
    Ok((
        row,
        format!("{SERVICE_ACCOUNT_PREFIX}{id}_{}", secret.as_str()),
    ))
}

/// Checks a presented service-account key; the account when it is valid and active.
async fn service_account(app: &Issuer, headers: &HeaderMap) -> Result<ServiceAccountRow, ApiError> {
    let unauth = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_service_account", m);
    let presented = crate::util::presented_token(headers).ok_or_else(|| {
        unauth("POST /v1/token needs a service-account key: Authorization: Bearer alk_sa_…")
    })?;
    let rest = presented
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .ok_or_else(|| unauth("not a service-account key (they start with alk_sa_)"))?;
    let (id, secret) = rest
        .split_once('_')
        .ok_or_else(|| unauth("malformed service-account key"))?;
    let secret = Secret::new(secret.to_string());
    let row = app.store.service_account(id).await.map_err(|e| {
        tracing::error!(error = %e, "store failure while checking a service-account key");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database failed; see the server log",
        )
    })?;
    // Compared even when the id is unknown, so timing does not tell ids apart.
    let stored = row.as_ref().map(|r| r.hash.as_str()).unwrap_or("00");
    let ok = secret.matches_key_hash(&app.hmac, stored);
    let Some(row) = row.filter(|_| ok) else {
        return Err(unauth("service-account key not recognised"));
    };
    if row.revoked_at.is_some() {
        return Err(unauth("service account has been revoked"));
    }
    Ok(row)
}

/// Body of `POST /v1/token` (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenAsk {
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    credentials: Vec<String>,
    env: Option<String>,
    ttl: Option<String>,
    project: Option<String>,
}

fn client_meta(req: &Request<Body>) -> (Option<String>, Option<String>) {
    (
        req.extensions()
            .get::<crate::RequestId>()
            .map(|r| r.0.clone()),
        req.extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
    )
}

/// What an identity endpoint writes to the audit log.
pub struct Event {
    /// `token.mint`, `token.exchange`, `token.revoke`.
    pub action: &'static str,
    /// `service_account`, `workload`, `token`, `anonymous`.
    pub actor_kind: &'static str,
    /// Account id, `trust:<policy>`, token id.
    pub actor: Option<String>,
    /// Who, in words (account name, the identity token's subject).
    pub subject: Option<String>,
    /// The token issued or revoked.
    pub target: Option<String>,
    /// Why it was refused.
    pub reason: Option<String>,
    /// HTTP status answered.
    pub status: StatusCode,
    /// Request id and client address.
    pub meta: (Option<String>, Option<String>),
}

/// Writes an identity event; false when a change's record could not be written and the
/// server is fail-closed (the caller must then not hand out what it made). Refusals without
/// a known actor are rate-limited like other anonymous refusals.
pub async fn audit_event(app: &Issuer, e: Event) -> bool {
    let ok = e.status.is_success();
    if e.actor.is_none() && !app.recorder.anonymous_allowed() {
        return true;
    }
    let record = airlock_audit::Record {
        ts: now_ms(),
        actor_kind: e.actor_kind.into(),
        actor: e.actor,
        subject: e.subject,
        action: e.action.into(),
        target_kind: Some("token".into()),
        target: e.target,
        outcome: if ok {
            "ok"
        } else if e.status.is_client_error() {
            "refused"
        } else {
            "failed"
        }
        .into(),
        reason: e.reason.map(|r| crate::util::without_values(&r)),
        request_id: e.meta.0,
        client_ip: e.meta.1,
        status: Some(i64::from(e.status.as_u16())),
        ..Default::default()
    };
    let note = if ok {
        airlock_audit::log::Note::Issued
    } else {
        airlock_audit::log::Note::Declined
    };
    app.recorder
        .write_noted(None, record, note)
        .await
        .may_answer()
}

fn audit_unavailable() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        "the audit log cannot be written; no token was handed out",
    )
    .render(Dialect::OpenAi)
}

/// `POST /v1/token`: a service account mints a token within its own scope.
pub async fn mint_for_service_account(app: Arc<Issuer>, req: Request<Body>) -> Response {
    let meta = client_meta(&req);
    let headers = req.headers().clone();
    let sa = match service_account(&app, &headers).await {
        Ok(sa) => sa,
        Err(e) => {
            let status = e.status;
            let reason = Some(e.message.clone());
            audit_event(
                &app,
                Event {
                    action: "token.mint",
                    actor_kind: "anonymous",
                    actor: None,
                    subject: None,
                    target: None,
                    reason,
                    status,
                    meta,
                },
            )
            .await;
            return e.render(Dialect::OpenAi);
        }
    };
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024).await;
    let refuse = |app: Arc<Issuer>, sa: ServiceAccountRow, meta, resp: Response, reason: String| async move {
        let ok = audit_event(
            &app,
            Event {
                action: "token.mint",
                actor_kind: "service_account",
                actor: Some(format!("sa:{}", sa.id)),
                subject: Some(sa.name.clone()),
                target: None,
                reason: Some(reason),
                status: resp.status(),
                meta,
            },
        )
        .await;
        if ok {
            resp
        } else {
            audit_unavailable()
        }
    };
    let Ok(bytes) = body else {
        let msg = "request body over 64 KiB".to_string();
        let r = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            msg.clone(),
        )
        .render(Dialect::OpenAi);
        return refuse(app, sa, meta, r, msg).await;
    };
    let ask: TokenAsk = if bytes.iter().all(u8::is_ascii_whitespace) {
        TokenAsk::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                let msg = format!("body must be JSON like {{\"models\": [\"gpt-4o-mini\"], \"ttl\": \"15m\"}}: {e}");
                let r = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", msg.clone())
                    .render(Dialect::OpenAi);
                return refuse(app, sa, meta, r, msg).await;
            }
        }
    };
    let ttl = match ask.ttl.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            let msg = format!("ttl: {e} (examples: 15m, 1h)");
            let r = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", msg.clone())
                .render(Dialect::OpenAi);
            return refuse(app, sa, meta, r, msg).await;
        }
    };
    let scope: Scope = match serde_json::from_value(sa.scope.clone()) {
        Ok(s) => s,
        Err(_) => {
            let msg = "this service account's stored scope is unreadable; recreate it".to_string();
            let r = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg.clone())
                .render(Dialect::OpenAi);
            return refuse(app, sa, meta, r, msg).await;
        }
    };
    let origin = Origin {
        subject: format!("sa:{}", sa.name),
        minted_by: format!("sa:{}", sa.id),
        claims: None,
    };
    let asked = Ask {
        env: ask.env,
        models: split_list(ask.models),
        credentials: split_list(ask.credentials),
        ttl,
        project: ask.project,
    };
    match issue(&app, Some(&scope), asked, origin).await {
        Ok(issued) => {
            // Revoked meanwhile? Its sweep may have run before this token was stored.
            if !matches!(app.store.service_account(&sa.id).await, Ok(Some(r)) if r.revoked_at.is_none())
            {
                let _ = app.store.revoke_token(&issued.minted.id, now_ms()).await;
                let _ = app.tokens.reload_revocations().await;
                let msg = "service account has been revoked".to_string();
                let r = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_service_account",
                    msg.clone(),
                )
                .render(Dialect::OpenAi);
                return refuse(app, sa, meta, r, msg).await;
            }
            let _ = app.store.touch_service_account(&sa.id, now_ms()).await;
            let ok = audit_event(
                &app,
                Event {
                    action: "token.mint",
                    actor_kind: "service_account",
                    actor: Some(format!("sa:{}", sa.id)),
                    subject: Some(sa.name.clone()),
                    target: Some(issued.minted.id.clone()),
                    reason: None,
                    status: StatusCode::CREATED,
                    meta,
                },
            )
            .await;
            if !ok {
                // Not handed out, so not usable: revoke what was minted.
                let _ = app.store.revoke_token(&issued.minted.id, now_ms()).await;
                return audit_unavailable();
            }
            (StatusCode::CREATED, Json(issued.json())).into_response()
        }
        Err(e) => {
            let msg = match &e {
                IssueError::Invalid(m) | IssueError::OutOfScope(m) | IssueError::Failed(m) => {
                    m.clone()
                }
            };
            refuse(app, sa, meta, e.render(), msg).await
        }
    }
}

/// `POST /v1/token/revoke`: a token revokes itself (`airlock run` does this when its command
/// ends). Only an unattenuated token may: a narrowed copy handed to someone else must not be
/// able to end its parent.
pub async fn revoke_self(app: Arc<Issuer>, req: Request<Body>) -> Response {
    let meta = client_meta(&req);
    let v = match app.tokens.authenticate(req.headers()) {
        Ok(v) => v,
        Err(e) if e.code == "token_revoked" => {
            return Json(serde_json::json!({ "revoked": true })).into_response();
        }
        Err(e) => {
            audit_event(
                &app,
                Event {
                    action: "token.revoke",
                    actor_kind: "anonymous",
                    actor: None,
                    subject: None,
                    target: None,
                    reason: Some(e.message.clone()),
                    status: e.status,
                    meta,
                },
            )
            .await;
            return e.render(Dialect::OpenAi);
        }
    };
    let event = |status: StatusCode, reason: Option<String>| Event {
        action: "token.revoke",
        actor_kind: "token",
        actor: Some(v.id.clone()),
        subject: Some(v.subject.clone()),
        target: Some(v.id.clone()),
        reason,
        status,
        meta: meta.clone(),
    };
    if v.blocks > 1 {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "not_allowed",
            "an attenuated token cannot revoke itself (it would end the token it came from); ask whoever gave it to you",
        );
        if !audit_event(&app, event(e.status, Some(e.message.clone()))).await {
            return audit_unavailable();
        }
        return e.render(Dialect::OpenAi);
    }
    // Revoking is the safe direction: it is done even when the audit log is failing (the
    // answer then says the record is missing).
    {
        let serial = app.tokens.serial().await;
        if let Err(e) = app.store.revoke_token(&v.id, now_ms()).await {
            tracing::error!(error = %e, "cannot revoke a token");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database failed; the token was not revoked",
            )
            .render(Dialect::OpenAi);
        }
        app.tokens.mark_revoked(&serial, &v.id);
    }
    if !audit_event(&app, event(StatusCode::OK, None)).await {
        // Revoked (the safe direction), but its record is missing: say so.
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the token was revoked, but the audit log could not record it; an operator must check the database",
        )
        .render(Dialect::OpenAi);
    }
    Json(serde_json::json!({ "revoked": true, "id": v.id })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str) -> Glob {
        Glob::new(p).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn narrowing_is_decided_exactly_or_refused() {
        assert!(glob_within("gpt-4o-mini", &g("gpt-*")));
        assert!(glob_within("gpt-4o*", &g("gpt-*")));
        assert!(glob_within("gpt-*", &g("gpt-*")));
        assert!(glob_within("anything*", &g("*")));
        assert!(glob_within("gpt-4o-mini", &g("gpt-4o-mini")));
        // Wider, or a wildcard before the allowed prefix ends: refused.
        assert!(!glob_within("*", &g("gpt-*")));
        assert!(!glob_within("gpt*", &g("gpt-*")));
        assert!(!glob_within("g?t-4o", &g("gpt-*")));
        assert!(!glob_within("claude-3", &g("gpt-*")));
        assert!(!glob_within("gpt-4o*", &g("gpt-4o-mini")));
        // Not decidable by the simple forms: refused rather than guessed.
        assert!(!glob_within("gpt-*-mini", &g("gpt-*-*")));
    }

    #[test]
    fn a_scope_is_checked_against_the_server() {
        let max = Duration::from_secs(3600);
        assert!(Scope::new(max, "prod", vec![], vec![], None).is_ok());
        assert!(Scope::new(max, "prod", vec![], vec![], Some(Duration::from_secs(7200))).is_err());
        assert!(Scope::new(max, "no spaces", vec![], vec![], None).is_err());
        assert!(Scope::new(max, "prod", vec!["gpt 4".into()], vec![], None).is_err());
        // One pattern per entry: a comma list in a stored scope would never mint.
        assert!(Scope::new(max, "prod", vec!["gpt-4o,gpt-4o-mini".into()], vec![], None).is_err());
        let s = Scope::new(max, "prod", vec![], vec![], None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.models, vec!["*".to_string()]);
        assert_eq!(s.max_ttl_secs, 3600);
    }
}
