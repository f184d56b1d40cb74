//! The admin API under `/admin/v1`. Every route declares the roles it admits (invariant I6):
//! routes are only added through [`guarded`], which wraps the handler in the role check, so a
//! route without a declared role cannot exist. Keys are `alk_admin_<id>_<secret>`; only a keyed
//! hash of the secret is stored and it is compared in constant time.

use crate::credentials::Credential;
use crate::util::{now_ms, valid_name, without_values};
use airlock_providers::adapter::ProviderKind;
use airlock_providers::dialect::{ApiError, Dialect};
use airlock_secrets::{Secret, SecretRef};
use airlock_store::{CredentialRow, StoreError};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use http::{Request, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

mod admin_keys;
mod audit;
mod credential;
mod limits;
mod lockdown;
mod reports;
mod service_account;
mod token;
mod trust;

pub use self::admin_keys::create_admin_key;
pub use self::audit::parse_time;
use self::{
    admin_keys::*, audit::*, credential::*, limits::*, lockdown::*, reports::*, service_account::*,
    token::*, trust::*,
};

/// What the control plane works with: every handle it changes or reads, and the one setting
/// it reads itself (`rotation_max_age_days`). Built once by `build_app`; the data plane never
/// sees it.
pub struct Control {
    /// The database.
    pub store: airlock_store::Store,
    /// HMAC key for admin-key hashes and fingerprints.
    pub hmac: Arc<airlock_secrets::HmacKey>,
    /// The verifier and the revocations.
    pub tokens: Arc<crate::tokens::Tokens>,
    /// The credentials in force and the secret stores.
    pub creds: Arc<crate::credentials::Credentials>,
    /// Spend caps.
    pub budgets: Arc<airlock_spend::budget::Budgets>,
    /// Requests and tokens per minute.
    pub rate_limits: Arc<airlock_spend::ratelimit::RateLimits>,
    /// The audit writer.
    pub recorder: crate::usage::Recorder,
    /// The client for provider checks.
    pub client: crate::util::HttpClient,
    /// Mints tokens.
    pub issuer: Arc<crate::identity::Issuer>,
    /// Token exchange's trust policies.
    pub trust: Arc<crate::oidc::Trust>,
    /// Key rotation.
    pub rotator: Arc<crate::rotation::Rotator>,
    /// Incident lockdown and report.
    pub responder: Arc<crate::incident::Responder>,
    /// The anomaly detector, once started (absent with `[anomaly] enabled = false`); the one
    /// place it is kept (`/metrics` reads it here too).
    pub anomaly: std::sync::OnceLock<Arc<airlock_spend::anomaly::Detector>>,
    /// `[rotation] max_age_days`: a key older than this is overdue.
    pub rotation_max_age_days: u32,
}

/// Prefix of admin keys.
pub const ADMIN_KEY_PREFIX: &str = "alk_admin_";

/// Roles of people and automation on the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Owner,
    /// Manage credentials and tokens.
    Admin,
    /// Read inventory, usage and (later) audit.
    Auditor,
    /// Mint tokens within granted scopes.
    Developer,
    /// Read inventory.
    Viewer,
}

impl Role {
    /// Parses a role name; unknown names are refused (I6).
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "auditor" => Role::Auditor,
            "developer" => Role::Developer,
            "viewer" => Role::Viewer,
            _ => return None,
        })
    }
}

const MANAGE: &[Role] = &[Role::Owner, Role::Admin];
const READ_INVENTORY: &[Role] = &[Role::Owner, Role::Admin, Role::Auditor, Role::Viewer];
// Developers mint only within the grant their key carries (checked in `mint_token`).
const MINT: &[Role] = &[Role::Owner, Role::Admin, Role::Developer];
const READ_TOKENS: &[Role] = &[Role::Owner, Role::Admin, Role::Auditor];
const MATCH_SECRETS: &[Role] = &[Role::Owner, Role::Admin, Role::Auditor];
const READ_AUDIT: &[Role] = &[Role::Owner, Role::Admin, Role::Auditor];
// Admin keys are issued and revoked by owners only: an admin cannot make an owner.
const OWNER: &[Role] = &[Role::Owner];

/// The authenticated caller of an admin endpoint.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Admin key id.
    pub key_id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// A developer key's grant: the scope it may mint within.
    pub grant: Option<crate::identity::Scope>,
}

fn err(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Response {
    ApiError::new(status, code, msg).render(Dialect::OpenAi)
}

async fn caller(app: &Control, headers: &http::HeaderMap) -> Result<Caller, Response> {
    let unauth = |m: &str| err(StatusCode::UNAUTHORIZED, "invalid_admin_key", m);
    let presented = crate::util::presented_token(headers)
        .ok_or_else(|| unauth("admin API needs an admin key: Authorization: Bearer alk_admin_… (set AIRLOCK_ADMIN_TOKEN for the CLI)"))?;
    let rest = presented
        .strip_prefix(ADMIN_KEY_PREFIX)
        .ok_or_else(|| unauth("not an admin key (admin keys start with alk_admin_; client tokens cannot call the admin API)"))?;
    let (id, secret) = rest
        .split_once('_')
        .ok_or_else(|| unauth("malformed admin key"))?;
    let secret = Secret::new(secret.to_string());
    let row = app.store.admin_key(id).await.map_err(|e| {
        tracing::error!(error = %e, "store failure while checking an admin key");
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database failed; see the server log",
        )
    })?;
    // Compare even when the id is unknown so timing does not tell ids apart.
    let stored = row.as_ref().map(|r| r.hash.as_str()).unwrap_or("00");
    let ok = secret.matches_key_hash(&app.hmac, stored);
    let Some(row) = row.filter(|_| ok) else {
        return Err(unauth("admin key not recognised"));
    };
    if row.revoked_at.is_some() {
        return Err(unauth("admin key has been revoked"));
    }
    let role = Role::parse(&row.role).ok_or_else(|| {
        err(
            StatusCode::FORBIDDEN,
            "unknown_role",
            "admin key has an unknown role",
        )
    })?;
    let grant = row
        .grant
        .as_deref()
        .and_then(|g| serde_json::from_str(g).ok());
    Ok(Caller {
        key_id: row.id,
        name: row.name,
        role,
        grant,
    })
}

/// Wraps a method router so that it only runs for callers holding one of `roles`.
fn guarded(
    app: &Arc<Control>,
    roles: &'static [Role],
    action: Option<&'static str>,
    inner: MethodRouter<Arc<Control>>,
) -> MethodRouter<Arc<Control>> {
    inner.layer(axum::middleware::from_fn_with_state(
        (roles, action, app.clone()),
        |State((roles, action, app)): State<(
            &'static [Role],
            Option<&'static str>,
            Arc<Control>,
        )>,
         mut req: Request<Body>,
         next: axum::middleware::Next| async move {
            let headers = req.headers().clone();
            let meta = RequestMeta::of(&req);
            let c = match caller(&app, &headers).await {
                Ok(c) => c,
                Err(r) => {
                    // Refused before an identity is known: audited like anonymous requests.
                    let action = action.unwrap_or("admin.read");
                    return audit_admin(&app, None, action, meta, r).await;
                }
            };
            if !roles.contains(&c.role) {
                let r = err(
                    StatusCode::FORBIDDEN,
                    "role_not_allowed",
                    format!(
                        "role {:?} may not call {} {}",
                        c.role,
                        req.method(),
                        airlock_secrets::redact_path(req.uri().path())
                    )
                    .to_lowercase(),
                );
                return audit_admin(&app, Some(&c), action.unwrap_or("admin.read"), meta, r).await;
            }
            req.extensions_mut().insert(c.clone());
            let Some(action) = action else {
                // Reads are not audited; every change (and every refused change) is.
                return next.run(req).await;
            };
            // A change whose record cannot be written is not made (fail-closed).
            if !app.recorder.healthy() && !app.recorder.fail_open() {
                return crate::usage::audit_unavailable()
                    .render(airlock_providers::dialect::Dialect::OpenAi);
            }
            // The change and its record run to the end even when the caller hangs up: a
            // dropped connection must not leave a change made but not recorded.
            let task = tokio::spawn(async move {
                let resp = next.run(req).await;
                audit_admin(&app, Some(&c), action, meta, resp).await
            });
            task.await.unwrap_or_else(|_| {
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the request failed",
                )
            })
        },
    ))
}

/// What the audit record of an admin call needs from its request.
struct RequestMeta {
    request_id: Option<String>,
    client_ip: Option<String>,
    /// The id or name in the path (`/credentials/{name}`, `/tokens/{id}/revoke`).
    path_target: Option<String>,
}

impl RequestMeta {
    fn of(req: &Request<Body>) -> Self {
        let path = req.uri().path();
        // Inside the nested router the path may or may not still carry `/admin/v1`.
        let rest = path
            .strip_prefix("/admin/v1")
            .unwrap_or(path)
            .trim_start_matches('/');
        RequestMeta {
            request_id: req
                .extensions()
                .get::<crate::RequestId>()
                .map(|r| r.0.clone()),
            client_ip: req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            path_target: rest.split('/').nth(1).filter(|s| !s.is_empty()).map(|s| {
                if airlock_secrets::looks_like_key(s) {
                    "[redacted]".to_string()
                } else {
                    s.chars().take(200).collect()
                }
            }),
        }
    }
}

/// Writes the audit record of an admin call and answers only once it is durable (I5). The
/// response body is read for the target's name or id and, on errors, the reason.
async fn audit_admin(
    app: &Control,
    caller: Option<&Caller>,
    action: &'static str,
    meta: RequestMeta,
    resp: Response,
) -> Response {
    if caller.is_none() && !app.recorder.anonymous_allowed() {
        return resp;
    }
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let target = meta
        .path_target
        .or_else(|| field("name"))
        .or_else(|| field("id"));
    // The reason is the error's message with any quoted input left out: the log is
    // append-only, so a key pasted into the wrong field must never reach it (I1).
    let reason = (!status.is_success())
        .then(|| {
            json.as_ref()
                .and_then(|v| v.pointer("/error/message"))
                .and_then(|m| m.as_str())
                .map(without_values)
                // axum's own rejections are plain text until `rejections_as_json` rewraps them.
                .or_else(|| {
                    let text = String::from_utf8_lossy(&bytes);
                    Some(if text.trim().is_empty() {
                        format!("request refused ({status})")
                    } else {
                        without_values(text.trim())
                    })
                })
        })
        .flatten();
    let record = airlock_audit::Record {
        ts: now_ms(),
        actor_kind: if caller.is_some() {
            "admin"
        } else {
            "anonymous"
        }
        .into(),
        actor: caller.map(|c| c.key_id.clone()),
        subject: caller.map(|c| c.name.clone()),
        action: action.into(),
        target_kind: action.split('.').next().map(str::to_string),
        target,
        outcome: if status.is_success() {
            "ok"
        } else if status.is_client_error() {
            "refused"
        } else {
            "failed"
        }
        .into(),
        reason,
        request_id: meta.request_id,
        client_ip: meta.client_ip,
        status: Some(i64::from(status.as_u16())),
        ..Default::default()
    };
    let note = if status.is_success() {
        airlock_audit::log::Note::ChangeMade
    } else {
        airlock_audit::log::Note::Declined
    };
    if !app
        .recorder
        .write_noted(None, record, note)
        .await
        .may_answer()
    {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            if status.is_success() {
                "the change was made but its audit record could not be written (audit.on_failure = closed); an operator must check the database"
            } else {
                "the audit log cannot be written; an operator must check the database"
            },
        );
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The admin router (mounted at `/admin/v1`).
pub fn router(app: &Arc<Control>) -> Router<Arc<Control>> {
    use axum::routing::{delete, get, post};
    let g = |roles, action, inner| guarded(app, roles, action, inner);
    Router::new()
        .route(
            "/credentials",
            g(MANAGE, Some("credential.add"), post(add_credential)),
        )
        .route(
            "/credentials",
            g(READ_INVENTORY, None, get(list_credentials)),
        )
        .route(
            "/credentials/{name}",
            g(READ_INVENTORY, None, get(show_credential)),
        )
        .route(
            "/credentials/{name}",
            g(MANAGE, Some("credential.remove"), delete(remove_credential)),
        )
        .route(
            "/credentials/{name}/verify",
            g(MANAGE, Some("credential.verify"), post(verify_credential)),
        )
        .route(
            "/credentials/{name}/rotate",
            g(MANAGE, Some("credential.rotate"), post(rotate_credential)),
        )
        .route(
            "/credentials/{name}/suspend",
            g(MANAGE, Some("credential.suspend"), post(suspend_credential)),
        )
        .route(
            "/credentials/{name}/resume",
            g(MANAGE, Some("credential.resume"), post(resume_credential)),
        )
        .route(
            "/test/clock",
            g(OWNER, Some("test.clock"), post(advance_test_clock)),
        )
        .route("/doctor", g(MANAGE, Some("doctor"), post(doctor)))
        .route(
            "/admin-keys",
            g(OWNER, Some("admin_key.create"), post(create_admin_key_api)),
        )
        .route("/admin-keys", g(MANAGE, None, get(list_admin_keys)))
        .route(
            "/admin-keys/{id}/revoke",
            g(OWNER, Some("admin_key.revoke"), post(revoke_admin_key)),
        )
        .route(
            "/incident/lockdown",
            g(MANAGE, Some("incident.lockdown"), post(incident_lockdown)),
        )
        .route(
            "/incident/report",
            g(READ_AUDIT, None, get(incident_report)),
        )
        .route(
            "/kek/rotate",
            g(MANAGE, Some("kek.rotate"), post(rotate_kek)),
        )
        .route("/tokens", g(MINT, Some("token.mint"), post(mint_token)))
        .route(
            "/service-accounts",
            g(
                MANAGE,
                Some("service_account.create"),
                post(create_service_account),
            ),
        )
        .route(
            "/service-accounts",
            g(READ_TOKENS, None, get(list_service_accounts)),
        )
        .route(
            "/trust-policies",
            g(MANAGE, Some("trust_policy.add"), post(add_trust_policy)),
        )
        .route(
            "/trust-policies",
            g(READ_INVENTORY, None, get(list_trust_policies)),
        )
        .route(
            "/trust-policies/{name}",
            g(
                MANAGE,
                Some("trust_policy.remove"),
                delete(remove_trust_policy),
            ),
        )
        .route(
            "/service-accounts/{id}/revoke",
            g(
                MANAGE,
                Some("service_account.revoke"),
                post(revoke_service_account),
            ),
        )
        .route("/tokens", g(READ_TOKENS, None, get(list_tokens)))
        .route(
            "/tokens/{id}/revoke",
            g(MANAGE, Some("token.revoke"), post(revoke_token)),
        )
        .route(
            "/inventory/match",
            g(MATCH_SECRETS, Some("inventory.match"), post(match_secrets)),
        )
        .route("/usage/recent", g(READ_TOKENS, None, get(recent_usage)))
        .route("/usage", g(READ_AUDIT, None, get(usage_report)))
        .route("/budgets", g(MANAGE, Some("budget.set"), post(set_budget)))
        .route(
            "/rate-limits",
            g(MANAGE, Some("rate_limit.set"), post(set_rate_limit)),
        )
        .route("/rate-limits", g(READ_AUDIT, None, get(list_rate_limits)))
        .route(
            "/rate-limits/{id}",
            g(MANAGE, Some("rate_limit.remove"), delete(remove_rate_limit)),
        )
        .route("/budgets", g(READ_AUDIT, None, get(list_budgets)))
        .route(
            "/budgets/{id}",
            g(MANAGE, Some("budget.remove"), delete(remove_budget)),
        )
        .route("/audit", g(READ_AUDIT, None, get(audit_records)))
        .route(
            "/audit/checkpoints",
            g(READ_AUDIT, None, get(audit_checkpoints)),
        )
        .route("/audit/keys", g(READ_AUDIT, None, get(audit_keys)))
        .route(
            "/audit/checkpoint",
            g(READ_AUDIT, None, post(sign_checkpoint)),
        )
        .layer(axum::middleware::map_response(rejections_as_json))
}

/// axum's extractors answer a malformed body, query or path with plain text; the admin API
/// speaks JSON errors only, so those are rewrapped (their text says what was wrong).
async fn rejections_as_json(resp: Response) -> Response {
    let plain = !resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !plain || !resp.status().is_client_error() {
        return resp;
    }
    let status = resp.status();
    let text = match axum::body::to_bytes(resp.into_body(), 16 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let msg = if text.trim().is_empty() {
        format!("request refused ({status})")
    } else {
        without_values(text.trim())
    };
    err(status, "invalid_request", msg)
}

fn store_err(e: StoreError) -> Response {
    match e {
        e @ StoreError::Conflict(_) => err(
            StatusCode::CONFLICT,
            "conflict",
            format!("{e}; pick another name or remove it first"),
        ),
        e => {
            tracing::error!(error = %e, "store failure");
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database failed; see the server log",
            )
        }
    }
}

/// A stored scope that no longer reads as one (only a manual edit of the database does that):
/// logged, and the row is listed without it so that it can still be found and revoked.
fn unreadable_scope(what: &str, id: &str, e: &serde_json::Error) -> bool {
    tracing::error!(%id, error = %e, "a stored {what} scope is unreadable");
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn rejection_messages_drop_the_values_they_quote() {
        let m = super::without_values(
            "candidates: invalid type: string \"sk-abcdefghijklmnopqrstuvwxyz0123456789\", expected a sequence at line 1 column 60",
        );
        assert_eq!(
            m,
            "candidates: invalid type: string \"…\", expected a sequence at line 1 column 60"
        );
        let m = super::without_values("unknown field `bogus`, expected one of `name`, `env`");
        assert_eq!(m, "unknown field `bogus`, expected one of `name`, `env`");
        let long = format!("unknown field `{}`", "k".repeat(40));
        assert_eq!(super::without_values(&long), "unknown field `…`");
        assert_eq!(super::without_values("open \"quote"), "open \"…");
    }
}
