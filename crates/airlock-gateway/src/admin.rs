//! The admin API under `/admin/v1`. Every route declares the roles it admits (invariant I6):
//! routes are only added through [`guarded`], which wraps the handler in the role check, so a
//! route without a declared role cannot exist. Keys are `alk_admin_<id>_<secret>`; only a keyed
//! hash of the secret is stored and it is compared in constant time.

use crate::credentials::Credential;
use crate::state::App;
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

async fn caller(app: &App, headers: &http::HeaderMap) -> Result<Caller, Response> {
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
    app: &Arc<App>,
    roles: &'static [Role],
    action: Option<&'static str>,
    inner: MethodRouter<Arc<App>>,
) -> MethodRouter<Arc<App>> {
    inner.layer(axum::middleware::from_fn_with_state(
        (roles, action, app.clone()),
        |State((roles, action, app)): State<(&'static [Role], Option<&'static str>, Arc<App>)>,
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
    app: &App,
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
        crate::usage::NOTE_CHANGE_MADE
    } else {
        "refused, and its record could not be written at the time"
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
pub fn router(app: &Arc<App>) -> Router<Arc<App>> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddCredential {
    name: String,
    provider: String,
    env: String,
    /// Where the key lives.
    secret_ref: Option<String>,
    /// Or the key itself, to be sealed under the KEK (`--secret-stdin`). Moved into a
    /// `Secret` at once; never stored, logged or echoed.
    secret_value: Option<String>,
    base_url: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    priority: Option<i64>,
}

async fn add_credential(State(app): State<Arc<App>>, Json(a): Json<AddCredential>) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    if !valid_name(&a.name) {
        return bad(format!(
            "credential name `{}`: use 1-64 letters, digits, '-', '_' or '.'",
            a.name
        ));
    }
    if !valid_name(&a.env) {
        return bad(format!(
            "environment `{}`: use 1-64 letters, digits, '-', '_' or '.'",
            a.env
        ));
    }
    let Some(provider) = ProviderKind::parse(&a.provider) else {
        return bad(format!(
            "unknown provider `{}`: use openai, anthropic, azure or openai-compatible",
            a.provider
        ));
    };
    if let Some(u) = &a.base_url {
        let ok = (u.starts_with("https://") || u.starts_with("http://"))
            && u.parse::<http::Uri>().is_ok();
        if !ok {
            return bad(format!("base URL `{u}` must be an http:// or https:// URL"));
        }
    } else if provider.default_base_url().is_none() {
        return bad(format!("provider {} needs --base-url", provider.as_str()));
    }
    let models = if a.models.is_empty() {
        vec!["*".to_string()]
    } else {
        a.models
    };
    if let Err(e) = airlock_token::glob::parse_list(&models) {
        return bad(e.to_string());
    }
    let (reference, secret, version, sealed) = match (a.secret_ref, a.secret_value) {
        (Some(r), None) => {
            let reference = match SecretRef::parse(&r) {
                Ok(SecretRef::Sealed(_)) => {
                    return bad("sealed: references are made by airlock: give the key with --secret-stdin and it is sealed under the KEK".into())
                }
                Ok(r) => r,
                Err(e) => return bad(e.to_string()),
            };
            match app.creds.secrets.resolve(&reference, &a.name).await {
                Ok(r) => (reference, r.secret, r.version, None),
                Err(e) => {
                    let (status, code) = if e.is_definite() {
                        (StatusCode::BAD_REQUEST, "invalid_request")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                    };
                    return err(
                        status,
                        code,
                        format!("the server cannot read {reference}: {e}"),
                    );
                }
            }
        }
        (None, Some(v)) => {
            let secret = match airlock_secrets::value_to_secret(v, "the secret given") {
                Ok(s) => s,
                Err(e) => return bad(e.to_string()),
            };
            match app.creds.secrets.seal(&a.name, &secret).await {
                Ok(row) => (
                    SecretRef::Sealed(row.id.clone()),
                    secret,
                    Some(format!("{}@{}", row.kek, row.kek_version)),
                    Some(row),
                ),
                Err(e) => {
                    let status = if e.is_definite() {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    return err(
                        status,
                        "kek_unavailable",
                        format!("cannot seal the secret: {e}"),
                    );
                }
            }
        }
        _ => return bad(
            "give exactly one of secret_ref (where the key lives) and secret_value (a key to seal)"
                .into(),
        ),
    };
    let row = CredentialRow {
        name: a.name,
        provider: provider.as_str().into(),
        env: a.env,
        secret_ref: reference.to_string(),
        base_url: a.base_url,
        models,
        priority: a.priority.unwrap_or(100),
        fingerprint: Some(secret.fingerprint(&app.hmac)),
        last4: Some(secret.last4()),
        created_at: now_ms(),
        rotated_at: None,
        last_used_at: None,
        suspended: false,
        secret_version: version,
    };
    drop(secret);
    if let Err(e) = Credential::from_row(&row, &app.hmac) {
        return bad(e);
    }
    if let Err(e) = app
        .store
        .insert_credential_with(&row, sealed.as_ref())
        .await
    {
        return store_err(e);
    }
    if let Some(d) = app.anomaly.get() {
        d.credential_added(&row.name, row.created_at);
    }
    if let Err(e) = app.creds.reload().await {
        return store_err(e);
    }
    tracing::info!(credential = %row.name, provider = %row.provider, env = %row.env, "credential added");
    (StatusCode::CREATED, Json(row)).into_response()
}

async fn list_credentials(State(app): State<Arc<App>>) -> Response {
    match app.store.list_credentials().await {
        Ok(rows) => {
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["rotation"] = rotation_state(&app, r);
                    v
                })
                .collect();
            Json(serde_json::json!({ "credentials": list })).into_response()
        }
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowQuery {
    window_days: Option<u32>,
}

/// Age of a credential's key against `rotation.max_age_days`.
fn rotation_state(app: &App, row: &CredentialRow) -> serde_json::Value {
    let since = row.rotated_at.unwrap_or(row.created_at);
    let age_ms = (now_ms() - since).max(0);
    let max = i64::from(app.cfg.rotation.max_age_days);
    serde_json::json!({
        "key_age_days": age_ms / 86_400_000,
        "max_age_days": max,
        "overdue": age_ms > max * 86_400_000,
    })
}

async fn show_credential(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    match app.store.get_credential(&name).await {
        Ok(Some(row)) => {
            let totals = app.store.credential_totals(&name).await.unwrap_or_default();
            let window_days = q.window_days.unwrap_or(7).clamp(1, 3650);
            let since = now_ms() - i64::from(window_days) * 86_400_000;
            let activity = match app.store.credential_activity(&name, since).await {
                Ok(a) => a,
                Err(e) => return store_err(e),
            };
            let mut v = serde_json::to_value(&row).unwrap_or_default();
            let rotations = app.store.rotations(&name, 20).await.unwrap_or_default();
            v["rotation"] = rotation_state(&app, &row);
            v["rotation"]["state"] = match rotations
                .iter()
                .find(|r| r.state == "promoted" || r.state == "confirmed")
            {
                Some(r) if r.state == "confirmed" => "rotated, old key confirmed dead".into(),
                Some(_) => "rotated, waiting for the old key to be revoked at the provider (then: credential verify --old)".into(),
                None => "never rotated".into(),
            };
            v["rotations"] = serde_json::to_value(&rotations).unwrap_or_default();
            v["usage"] = serde_json::to_value(totals).unwrap_or_default();
            v["activity"] = serde_json::to_value(&activity).unwrap_or_default();
            v["activity"]["window_days"] = window_days.into();
            Json(v).into_response()
        }
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}`"),
        ),
        Err(e) => store_err(e),
    }
}

async fn remove_credential(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    match app.store.delete_credential(&name).await {
        Ok(true) => {
            if let Err(e) = app.creds.reload().await {
                return store_err(e);
            }
            tracing::info!(credential = %name, "credential removed");
            Json(serde_json::json!({ "removed": name })).into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}`"),
        ),
        Err(e) => store_err(e),
    }
}

/// `credential verify`: reads the key from its store now and makes the provider's cheapest
/// authenticated call (list models).
async fn verify_credential(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Option<Json<VerifyBody>>,
) -> Response {
    if body.is_some_and(|b| b.old) {
        return match crate::rotation::confirm_old(&app.rotator, &name).await {
            Ok(v) => Json(v).into_response(),
            Err(e) => err(e.status, e.code, e.message),
        };
    }
    let Some(c) = app.creds.load().get(&name).cloned() else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}`"),
        );
    };
    Json(crate::upstream::verify(&app.creds, &app.client, &c).await).into_response()
}

async fn incident_lockdown(
    State(app): State<Arc<App>>,
    Json(req): Json<crate::incident::Lockdown>,
) -> Response {
    match crate::incident::lockdown(&app.responder, req).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => err(e.status, e.code, e.message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    since: String,
    until: Option<String>,
}

async fn incident_report(State(app): State<Arc<App>>, Query(q): Query<ReportQuery>) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    let since = match parse_time(&q.since) {
        Ok(t) => t,
        Err(m) => return bad(m),
    };
    let until = match q.until.as_deref().map(parse_time).transpose() {
        Ok(t) => t.unwrap_or_else(now_ms),
        Err(m) => return bad(m),
    };
    if until <= since {
        return bad("`until` must be after `since`".into());
    }
    match crate::incident::report(&app.responder, since, until).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => err(e.status, e.code, e.message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAdminKey {
    name: String,
    role: String,
    /// A developer's grant: the environment, models, credentials and longest TTL their
    /// tokens may have. Required for developers, refused for other roles.
    env: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    credentials: Vec<String>,
    max_ttl: Option<String>,
}

/// `admin-key create`: the key is shown once; only its keyed hash is stored.
async fn create_admin_key_api(State(app): State<Arc<App>>, Json(k): Json<NewAdminKey>) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    if !valid_name(&k.name) {
        return bad(format!(
            "admin key name `{}`: use 1-64 letters, digits, '-', '_' or '.'",
            k.name
        ));
    }
    let Some(role) = Role::parse(&k.role) else {
        return bad(format!(
            "unknown role `{}`: use owner, admin, auditor, developer or viewer",
            k.role
        ));
    };
    let has_grant =
        k.env.is_some() || !k.models.is_empty() || !k.credentials.is_empty() || k.max_ttl.is_some();
    let grant = match (role, k.env.as_deref()) {
        (Role::Developer, None) => {
            return bad(
                "a developer key needs a grant: --env ENV [--model GLOB]… [--credential NAME]… [--max-ttl D]"
                    .into(),
            )
        }
        (Role::Developer, Some(env)) => {
            let max_ttl = match k.max_ttl.as_deref().map(humantime::parse_duration) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => return bad(format!("max_ttl: {e} (examples: 15m, 1h)")),
            };
            match crate::identity::Scope::new(
                app.cfg.max_ttl().unwrap_or(airlock_token::MAX_TTL),
                env,
                crate::identity::split_list(k.models),
                crate::identity::split_list(k.credentials),
                max_ttl,
            ) {
                Ok(s) => Some(s),
                Err(e) => return bad(format!("grant: {e}")),
            }
        }
        _ if has_grant => {
            return bad(format!(
                "only developer keys carry a grant; a {} key is not limited by one",
                k.role
            ))
        }
        _ => None,
    };
    match create_admin_key(&app.store, &app.hmac, &k.name, role, grant.as_ref()).await {
        Ok(key) => {
            let id = key
                .strip_prefix(ADMIN_KEY_PREFIX)
                .and_then(|r| r.split('_').next())
                .unwrap_or_default()
                .to_string();
            // Which key, with which role: issuing an owner key must stand out in the log.
            app.recorder.write_nowait(
                None,
                Some(airlock_audit::Record {
                    ts: now_ms(),
                    actor_kind: "system".into(),
                    action: "admin_key.issued".into(),
                    target_kind: Some("admin_key".into()),
                    target: Some(id.clone()),
                    outcome: "ok".into(),
                    reason: Some(match &grant {
                        Some(g) => {
                            format!("role {} for `{}` within {}", k.role, k.name, g.describe())
                        }
                        None => format!("role {} for `{}`", k.role, k.name),
                    }),
                    ..Default::default()
                }),
            );
            (
                StatusCode::CREATED,
                                Json(serde_json::json!({"id": id, "name": k.name, "role": k.role, "grant": grant, "key": key})),
            )
                .into_response()
        }
        Err(e) => store_err(e),
    }
}

async fn list_admin_keys(State(app): State<Arc<App>>) -> Response {
    match app.store.list_admin_keys().await {
        Ok(rows) => Json(serde_json::json!({ "admin_keys": rows })).into_response(),
        Err(e) => store_err(e),
    }
}

async fn revoke_admin_key(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    // The last active owner key is never revoked (nobody could issue keys again): the store
    // checks it in the same statement as the revocation.
    match app.store.revoke_admin_key(&id, now_ms()).await {
        Ok(true) => {
            // A developer's tokens are theirs: they end with the key. (Tokens minted by an
            // owner or admin are usually handed to applications and stay.)
            let mut tokens = 0;
            if matches!(app.store.admin_key(&id).await, Ok(Some(k)) if k.role == "developer") {
                let serial = app.tokens.serial().await;
                tokens = match app.store.revoke_tokens_minted_by(&id, now_ms()).await {
                    Ok(n) => n,
                    Err(e) => return store_err(e),
                };
                drop(serial);
                if let Err(e) = app.tokens.reload_revocations().await {
                    return store_err(e);
                }
            }
            Json(serde_json::json!({"revoked": id, "tokens_revoked": tokens})).into_response()
        }
        Ok(false) => match app.store.admin_key(&id).await {
            Ok(Some(k)) if k.revoked_at.is_none() && k.role == "owner" => err(
                StatusCode::CONFLICT,
                "last_owner",
                "this is the last active owner key; create another owner key first",
            ),
            Ok(_) => err(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no active admin key `{id}`"),
            ),
            Err(e) => store_err(e),
        },
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    #[serde(default)]
    old: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// The new key (sealed credentials). Moved into a `Secret` at once.
    secret_value: Option<String>,
}

/// `credential rotate`: stage → test → promote; a failed test is answered with the rotation
/// in state `failed` (nothing changed).
async fn rotate_credential(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Option<Json<RotateBody>>,
) -> Response {
    let new = match body.and_then(|Json(b)| b.secret_value) {
        Some(v) => match airlock_secrets::value_to_secret(v, "the new key") {
            Ok(s) => crate::rotation::NewKey::Value(s),
            Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
        },
        None => crate::rotation::NewKey::Store,
    };
    let source = if matches!(new, crate::rotation::NewKey::Value(_)) {
        "stdin"
    } else {
        "store"
    };
    match crate::rotation::rotate(&app.rotator, &name, new, source).await {
        Ok(row) => Json(row).into_response(),
        Err(e) => err(e.status, e.code, e.message),
    }
}

/// `doctor`: every store answers, the KEK wraps and unwraps, every credential's key reads and
/// its provider accepts it.
async fn doctor(State(app): State<Arc<App>>) -> Response {
    let mut checks: Vec<serde_json::Value> = app
        .creds
        .secrets
        .checks()
        .await
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .collect();
    // Each credential as `credential verify` sees it: the key read from its store now, then
    // the provider's cheapest authenticated call.
    let creds = app.creds.load_full();
    let reads = creds.all.iter().map(|c| {
        let app = app.clone();
        async move {
            let v = crate::upstream::verify(&app.creds, &app.client, c).await;
            let mut detail = v["detail"].as_str().unwrap_or_default().to_string();
            if let Some(fp) = v["fingerprint"].as_str() {
                detail.push_str(&format!(
                    "; read from {}{} (fingerprint {fp})",
                    c.reference().store(),
                    v["version"]
                        .as_str()
                        .map(|x| format!(", version {x}"))
                        .unwrap_or_default()
                ));
            }
            serde_json::json!({
                "name": format!("credential {}", c.name),
                "ok": v["status"] == "ok",
                "status": v["status"],
                "detail": detail,
                "reference": c.reference().to_string(),
            })
        }
    });
    checks.extend(futures_util::future::join_all(reads).await);
    let ok = checks.iter().all(|c| c["ok"] == true);
    Json(serde_json::json!({ "ok": ok, "checks": checks })).into_response()
}

/// `kek rotate`: a new KEK version, every sealed data key rewrapped under it.
async fn rotate_kek(State(app): State<Arc<App>>) -> Response {
    match app.creds.secrets.rotate_kek().await {
        Ok(report) => {
            tracing::info!(kek = %report.kek, rewrapped = report.rewrapped, failed = report.failed.len(), "KEK rotated");
            let status = if report.failed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::MULTI_STATUS
            };
            (status, Json(report)).into_response()
        }
        Err(e) => err(
            if e.is_definite() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            "kek_unavailable",
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mint {
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    credentials: Vec<String>,
    env: Option<String>,
    ttl: Option<String>,
    subject: Option<String>,
    /// A total spend cap on the token itself, US dollars.
    budget_usd: Option<f64>,
    /// The project its use is accounted to.
    project: Option<String>,
}

async fn mint_token(
    State(app): State<Arc<App>>,
    axum::Extension(c): axum::Extension<Caller>,
    Json(m): Json<Mint>,
) -> Response {
    use crate::identity::{issue, split_list, Ask, Origin};
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    let ttl = match m.ttl.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return bad(format!("ttl: {e} (examples: 15m, 1h, 24h)")),
    };
    // A developer mints only within the grant on their key, and only for themselves.
    let bound = match c.role {
        Role::Developer => match &c.grant {
            Some(g) => Some(g),
            None => {
                return err(
                    StatusCode::FORBIDDEN,
                    "no_grant",
                    "this developer key carries no grant; ask an owner for a key made with --env/--model",
                )
            }
        },
        _ => None,
    };
    if bound.is_some() && m.subject.is_some() {
        return err(
            StatusCode::FORBIDDEN,
            "outside_scope",
            "developers mint tokens in their own name; leave out subject",
        );
    }
    let origin = Origin {
        subject: m.subject.unwrap_or_else(|| format!("admin:{}", c.name)),
        minted_by: c.key_id.clone(),
        claims: None,
    };
    let ask = Ask {
        env: m.env,
        models: split_list(m.models),
        credentials: split_list(m.credentials),
        ttl,
        project: m.project,
    };
    let budget = match m.budget_usd.map(usd_to_nanos) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => return bad(format!("budget_usd: {e}")),
    };
    match issue(&app.issuer, bound, ask, origin).await {
        Ok(issued) => {
            let mut v = issued.json();
            if let Some(limit) = budget {
                let row = airlock_store::BudgetRow {
                    id: format!("bud_{}", airlock_secrets::random_token(6)),
                    kind: "token".into(),
                    key: issued.minted.id.clone(),
                    period: "total".into(),
                    limit_nanos: limit,
                    created_at: now_ms(),
                    created_by: c.key_id.clone(),
                };
                // The token is not handed out without its cap.
                let stored = app.store.insert_budget(&row).await;
                if stored.is_err() || app.budgets.reload(&app.store).await.is_err() {
                    let _ = app.store.revoke_token(&issued.minted.id, now_ms()).await;
                    let _ = app.tokens.reload_revocations().await;
                    return err(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the token's budget could not be stored, so the token was revoked; try again",
                    );
                }
                v["budget_usd"] = airlock_spend::budget::usd(limit).into();
            }
            (StatusCode::CREATED, Json(v)).into_response()
        }
        Err(e) => e.render(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServiceAccount {
    name: String,
    env: String,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    credentials: Vec<String>,
    max_ttl: Option<String>,
    /// The project its tokens are accounted to.
    project: Option<String>,
}

/// `service-account create`: the key is shown once; only its keyed hash is stored.
async fn create_service_account(
    State(app): State<Arc<App>>,
    axum::Extension(c): axum::Extension<Caller>,
    Json(n): Json<NewServiceAccount>,
) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    if !valid_name(&n.name) {
        return bad(format!(
            "service account name `{}`: use 1-64 letters, digits, '-', '_' or '.'",
            n.name
        ));
    }
    let max_ttl = match n.max_ttl.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return bad(format!("max_ttl: {e} (examples: 15m, 1h)")),
    };
    let scope = match crate::identity::Scope::new(
        app.cfg.max_ttl().unwrap_or(airlock_token::MAX_TTL),
        &n.env,
        crate::identity::split_list(n.models),
        crate::identity::split_list(n.credentials),
        max_ttl,
    )
    .and_then(|mut s| {
        s.project = n.project;
        s.check(app.cfg.max_ttl().unwrap_or(airlock_token::MAX_TTL))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let set = app.creds.load();
    let mut warnings = Vec::new();
    for name in &scope.credentials {
        match set.get(name) {
            None => warnings.push(format!("no credential `{name}` exists yet")),
            Some(cr) if cr.env != scope.env => {
                return bad(format!(
                "credential `{name}` is in environment `{}`, not `{}`; environments never cross",
                cr.env, scope.env
            ))
            }
            Some(_) => {}
        }
    }
    match crate::identity::create_service_account(&app.issuer, &n.name, &scope, &c.key_id).await {
        Ok((row, key)) => (
            StatusCode::CREATED,
            Json(serde_json::json!({
                "id": row.id,
                "name": row.name,
                "scope": scope,
                "key": key,
                "warnings": warnings,
            })),
        )
            .into_response(),
        Err(e) => store_err(e),
    }
}

async fn list_service_accounts(State(app): State<Arc<App>>) -> Response {
    match app.store.list_service_accounts().await {
        Ok(rows) => Json(serde_json::json!({ "service_accounts": rows })).into_response(),
        Err(e) => store_err(e),
    }
}

async fn revoke_service_account(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let serial = app.tokens.serial().await;
    match app.store.revoke_service_account(&id, now_ms()).await {
        // What a leaked key minted goes with it.
        Ok(Some(id)) => {
            let tokens = match app
                .store
                .revoke_tokens_minted_by(&format!("sa:{id}"), now_ms())
                .await
            {
                Ok(n) => n,
                Err(e) => return store_err(e),
            };
            drop(serial);
            if let Err(e) = app.tokens.reload_revocations().await {
                return store_err(e);
            }
            Json(serde_json::json!({ "revoked": id, "id": id, "tokens_revoked": tokens }))
                .into_response()
        }
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no active service account with id or name `{id}`"),
        ),
        Err(e) => store_err(e),
    }
}

/// `trust add`: a policy in the same shape as a `[[trust]]` table.
async fn add_trust_policy(
    State(app): State<Arc<App>>,
    axum::Extension(c): axum::Extension<Caller>,
    Json(p): Json<crate::oidc::TrustPolicy>,
) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    if app.cfg.trust.iter().any(|t| t.name == p.name) {
        return err(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "trust policy `{}` is defined in the configuration file",
                p.name
            ),
        );
    }
    let compiled = match p
        .clone()
        .compile("api", app.cfg.max_ttl().unwrap_or(airlock_token::MAX_TTL))
    {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    let row = airlock_store::TrustPolicyRow {
        name: p.name.clone(),
        policy: serde_json::to_value(&p).unwrap_or_default(),
        created_at: now_ms(),
        created_by: c.key_id.clone(),
    };
    if let Err(e) = app.store.insert_trust_policy(&row).await {
        return store_err(e);
    }
    if let Err(e) = app.trust.reload().await {
        tracing::error!(error = %e, "cannot reload trust policies");
    }
    (StatusCode::CREATED, Json(compiled.listing())).into_response()
}

async fn list_trust_policies(State(app): State<Arc<App>>) -> Response {
    let list: Vec<serde_json::Value> = app
        .trust
        .policies
        .load()
        .iter()
        .map(|c| c.listing())
        .collect();
    Json(serde_json::json!({ "trust_policies": list })).into_response()
}

async fn remove_trust_policy(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    match app.store.delete_trust_policy(&name).await {
        Ok(true) => {
            if let Err(e) = app.trust.reload().await {
                tracing::error!(error = %e, "cannot reload trust policies");
                return err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "reload_failed",
                    "the policy was deleted from the database but the server could not reload its policies; restart it",
                );
            }
            // A row shadowed by a configuration policy of the same name was never active: the
            // tokens named after that name are the configuration policy's.
            if app.cfg.trust.iter().any(|t| t.name == name) {
                return Json(
                    serde_json::json!({ "removed": name, "name": name, "tokens_revoked": 0 }),
                )
                .into_response();
            }
            // Tokens the policy granted end with it.
            let tokens = {
                let _serial = app.tokens.serial().await;
                match app
                    .store
                    .revoke_tokens_minted_by(&format!("trust:{name}"), now_ms())
                    .await
                {
                    Ok(n) => n,
                    Err(e) => return store_err(e),
                }
            };
            if let Err(e) = app.tokens.reload_revocations().await {
                return store_err(e);
            }
            Json(serde_json::json!({ "removed": name, "name": name, "tokens_revoked": tokens }))
                .into_response()
        }
        Ok(false) if app.cfg.trust.iter().any(|t| t.name == name) => err(
            StatusCode::CONFLICT,
            "conflict",
            format!("trust policy `{name}` is defined in the configuration file; remove it there"),
        ),
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no trust policy `{name}` was added through the API"),
        ),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
struct ListTokens {
    #[serde(default)]
    all: bool,
}

async fn list_tokens(State(app): State<Arc<App>>, Query(q): Query<ListTokens>) -> Response {
    match app.store.list_tokens(q.all, now_ms() / 1000).await {
        Ok(rows) => Json(serde_json::json!({ "tokens": rows })).into_response(),
        Err(e) => store_err(e),
    }
}

async fn revoke_token(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    // Held across the write and the in-memory update so a periodic reload cannot read the
    // database before the write and then replace the set after the insert.
    let serial = app.tokens.serial().await;
    match app.store.revoke_token(&id, now_ms()).await {
        Ok(true) => {
            // Takes effect at once: the in-memory set is what the hot path checks.
            app.tokens.mark_revoked(&serial, &id);
            tracing::info!(token_id = %id, "token revoked");
            Json(serde_json::json!({ "revoked": id })).into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token with id `{id}` was minted by this server"),
        ),
        Err(e) => store_err(e),
    }
}

async fn suspend_credential(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    set_suspended(&app, name, true).await
}

async fn resume_credential(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    set_suspended(&app, name, false).await
}

/// Suspends or resumes a credential: a suspended credential serves nothing until resumed.
async fn set_suspended(app: &Arc<App>, name: String, suspended: bool) -> Response {
    match app.store.set_suspended(&name, suspended).await {
        Ok(true) => {
            if let Err(e) = app.creds.reload().await {
                return store_err(e);
            }
            tracing::warn!(credential = %name, suspended, "credential suspension changed");
            Json(serde_json::json!({ "credential": name, "suspended": suspended })).into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}`"),
        ),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockReq {
    advance_secs: i64,
}

/// Moves the anomaly detector's clock (only on a server started with `AIRLOCK_TEST_CLOCK=1`).
async fn advance_test_clock(State(app): State<Arc<App>>, Json(c): Json<ClockReq>) -> Response {
    let Some(d) = app.anomaly.get().filter(|d| d.test_clock) else {
        return err(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "the test clock is off (it exists only on a server started with AIRLOCK_TEST_CLOCK=1)",
        );
    };
    if !(0..=366 * 86_400).contains(&c.advance_secs) {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "advance_secs must be between 0 and a year",
        );
    }
    let offset = d.advance(c.advance_secs * 1000);
    Json(serde_json::json!({ "offset_ms": offset })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchReq {
    candidates: Vec<String>,
}

async fn match_secrets(State(app): State<Arc<App>>, Json(m): Json<MatchReq>) -> Response {
    if m.candidates.len() > 10_000 {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "at most 10000 candidates per call",
        );
    }
    let rows = match app.store.list_credentials().await {
        Ok(r) => r,
        Err(e) => return store_err(e),
    };
    let matches: Vec<Option<String>> = m
        .candidates
        .into_iter()
        .map(|c| {
            let s = Secret::new(c);
            let fp = s.fingerprint(&app.hmac);
            rows.iter()
                .find(|r| r.fingerprint.as_deref() == Some(fp.as_str()))
                .map(|r| r.name.clone())
        })
        .collect();
    Json(serde_json::json!({ "matches": matches })).into_response()
}

#[derive(Deserialize)]
struct Recent {
    limit: Option<i64>,
}

async fn recent_usage(State(app): State<Arc<App>>, Query(q): Query<Recent>) -> Response {
    match app
        .store
        .recent_usage(q.limit.unwrap_or(100).clamp(1, 10_000))
        .await
    {
        Ok(rows) => Json(serde_json::json!({ "usage": rows })).into_response(),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    bucket: Option<String>,
}

/// `airlock usage`: requests, tokens and cost grouped by one dimension, optionally per hour
/// or day (UTC).
async fn usage_report(State(app): State<Arc<App>>, Query(q): Query<UsageQuery>) -> Response {
    use airlock_store::UsageDimension;
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    let by = match q.by.as_deref().map(UsageDimension::parse) {
        None => UsageDimension::Credential,
        Some(Some(d)) => d,
        Some(None) => {
            return bad("by: one of token, identity, credential, model, env".into());
        }
    };
    let now = now_ms();
    let since = match q.since.as_deref().map(parse_time) {
        None => now - 24 * 3600 * 1000,
        Some(Ok(t)) => t,
        Some(Err(e)) => return bad(format!("since: {e}")),
    };
    let until = match q.until.as_deref().map(parse_time) {
        None => now + 1,
        Some(Ok(t)) => t,
        Some(Err(e)) => return bad(format!("until: {e}")),
    };
    if until <= since {
        return bad("until must be after since".into());
    }
    let bucket_ms = match q.bucket.as_deref() {
        None | Some("none") => None,
        Some("hour") => Some(3_600_000),
        Some("day") => Some(86_400_000),
        Some(other) => return bad(format!("bucket `{other}`: hour, day or none")),
    };
    match app.store.usage_report(by, since, until, bucket_ms).await {
        Ok(rows) => {
            let name = by.name();
            let rows: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|r| {
                    let mut v = serde_json::json!({
                        name: r.key,
                        "requests": r.requests,
                        "input_tokens": r.input_tokens,
                        "output_tokens": r.output_tokens,
                        "cached_tokens": r.cached_tokens,
                        "cost_nanos": r.cost_nanos,
                        "cost_usd": format!("{}.{:09}", r.cost_nanos / 1_000_000_000, r.cost_nanos % 1_000_000_000),
                        "unpriced_requests": r.unpriced,
                    });
                    if let Some(b) = r.bucket_ms {
                        v["bucket"] = airlock_token::rfc3339((b / 1000) as u64).into();
                    }
                    v
                })
                .collect();
            Json(serde_json::json!({
                "by": name,
                "since": airlock_token::rfc3339((since / 1000).max(0) as u64),
                "until": airlock_token::rfc3339((until / 1000).max(0) as u64),
                "bucket": q.bucket.unwrap_or_else(|| "none".into()),
                "rows": rows,
            }))
            .into_response()
        }
        Err(e) => store_err(e),
    }
}

/// US dollars to nano-dollars (at most nine decimals matter).
fn usd_to_nanos(usd: f64) -> Result<i64, String> {
    if !(usd.is_finite() && usd > 0.0 && usd <= 1e9) {
        return Err(format!(
            "{usd} is not an amount between 0 and 1e9 US dollars"
        ));
    }
    Ok((usd * 1e9).round() as i64)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRateLimit {
    kind: String,
    key: String,
    rpm: Option<i64>,
    tpm: Option<i64>,
}

/// `rate-limit set`: requests and/or tokens per minute on a token, identity or credential.
async fn set_rate_limit(
    State(app): State<Arc<App>>,
    axum::Extension(c): axum::Extension<Caller>,
    Json(b): Json<NewRateLimit>,
) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    if let Err(e) = check_target(&b.kind, &b.key) {
        return bad(e);
    }
    if b.key.is_empty() || b.key.len() > 256 || airlock_secrets::looks_like_key(&b.key) {
        return bad("key: the token id, identity (subject) or credential name".into());
    }
    let ok = |v: Option<i64>| v.is_none_or(|n| (1..=1_000_000_000).contains(&n));
    if (b.rpm.is_none() && b.tpm.is_none()) || !ok(b.rpm) || !ok(b.tpm) {
        return bad("give rpm and/or tpm, each between 1 and 1e9 per minute".into());
    }
    let row = airlock_store::RateLimitRow {
        id: format!("rl_{}", airlock_secrets::random_token(6)),
        kind: b.kind,
        key: b.key,
        rpm: b.rpm,
        tpm: b.tpm,
        created_at: now_ms(),
        created_by: c.key_id,
    };
    if let Err(e) = app.store.insert_rate_limit(&row).await {
        return store_err(e);
    }
    if let Err(e) = app.rate_limits.reload(&app.store).await {
        return store_err(e);
    }
    (
        StatusCode::CREATED,
        Json(airlock_spend::ratelimit::describe(&row)),
    )
        .into_response()
}

/// What a budget or rate limit is set on: a known kind, and for a project a valid name.
fn check_target(kind: &str, key: &str) -> Result<(), String> {
    if airlock_spend::budget::Kind::parse(kind).is_none() {
        return Err("kind: token, identity, credential or project".into());
    }
    if kind == "project" && !valid_name(key) {
        return Err(format!(
            "project `{key}` must be 1-64 characters of letters, digits and -_."
        ));
    }
    Ok(())
}

async fn list_rate_limits(State(app): State<Arc<App>>) -> Response {
    match app.store.list_rate_limits().await {
        Ok(rows) => Json(serde_json::json!({
            "rate_limits": rows.iter().map(airlock_spend::ratelimit::describe).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_err(e),
    }
}

async fn remove_rate_limit(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.store.delete_rate_limit(&id).await {
        Ok(true) => {
            if let Err(e) = app.rate_limits.reload(&app.store).await {
                return store_err(e);
            }
            Json(serde_json::json!({ "removed": id, "id": id })).into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no rate limit `{id}`"),
        ),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBudget {
    kind: String,
    key: String,
    period: String,
    usd: f64,
}

/// `budget set`: a spend cap on a token, identity or credential.
async fn set_budget(
    State(app): State<Arc<App>>,
    axum::Extension(c): axum::Extension<Caller>,
    Json(b): Json<NewBudget>,
) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    if let Err(e) = check_target(&b.kind, &b.key) {
        return bad(e);
    }
    if airlock_spend::budget::Period::parse(&b.period).is_none() {
        return bad("period: day, month or total".into());
    }
    if b.key.is_empty() || b.key.len() > 256 || airlock_secrets::looks_like_key(&b.key) {
        return bad("key: the token id, identity (subject) or credential name".into());
    }
    let limit = match usd_to_nanos(b.usd) {
        Ok(n) => n,
        Err(e) => return bad(format!("usd: {e}")),
    };
    let row = airlock_store::BudgetRow {
        id: format!("bud_{}", airlock_secrets::random_token(6)),
        kind: b.kind,
        key: b.key,
        period: b.period,
        limit_nanos: limit,
        created_at: now_ms(),
        created_by: c.key_id,
    };
    if let Err(e) = app.store.insert_budget(&row).await {
        return store_err(e);
    }
    if let Err(e) = app.budgets.reload(&app.store).await {
        return store_err(e);
    }
    let status = app.budgets.status();
    (
        StatusCode::CREATED,
        Json(airlock_spend::budget::describe(
            &row,
            status.iter().find(|s| s.id == row.id),
        )),
    )
        .into_response()
}

async fn list_budgets(State(app): State<Arc<App>>) -> Response {
    match app.store.list_budgets().await {
        Ok(rows) => {
            let status = app.budgets.status();
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| airlock_spend::budget::describe(r, status.iter().find(|s| s.id == r.id)))
                .collect();
            Json(serde_json::json!({ "budgets": list })).into_response()
        }
        Err(e) => store_err(e),
    }
}

async fn remove_budget(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.store.delete_budget(&id).await {
        Ok(true) => {
            if let Err(e) = app.budgets.reload(&app.store).await {
                return store_err(e);
            }
            Json(serde_json::json!({ "removed": id, "id": id })).into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no budget `{id}`"),
        ),
        Err(e) => store_err(e),
    }
}

/// Creates an admin key and stores its hash; returns the full key (shown once).
pub async fn create_admin_key(
    store: &airlock_store::Store,
    hmac: &airlock_secrets::HmacKey,
    name: &str,
    role: Role,
    grant: Option<&crate::identity::Scope>,
) -> Result<String, StoreError> {
    let id = airlock_secrets::random_token(6);
    // Returned to the caller once and never stored: only its keyed hash is.
    let secret = zeroize::Zeroizing::new(airlock_secrets::random_token(24));
    let hash = hmac.key_hash(secret.as_bytes());
    let role_s = format!("{role:?}").to_lowercase();
    store
        .insert_admin_key(
            &id,
            name,
            &role_s,
            &hash,
            grant.and_then(|g| serde_json::to_string(g).ok()).as_deref(),
            now_ms(),
        )
        .await?;
    Ok(format!("{ADMIN_KEY_PREFIX}{id}_{}", secret.as_str()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after_seq: Option<i64>,
    limit: Option<i64>,
    credential: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    #[serde(default)]
    newest: bool,
}

/// A time as unix milliseconds or RFC 3339.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| format!("`{s}` is not a time"));
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
        .map_err(|_| {
            format!("`{s}` is not a time: use RFC 3339 (2026-11-25T10:00:00Z) or unix milliseconds")
        })
}

async fn audit_records(State(app): State<Arc<App>>, Query(q): Query<AuditQuery>) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    let since = match q.since.as_deref().map(parse_time).transpose() {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let until = match q.until.as_deref().map(parse_time).transpose() {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let f = airlock_store::AuditFilter {
        after_seq: q.after_seq,
        credential: q.credential,
        actor: q.actor,
        action: q.action,
        since,
        until,
        limit,
        newest: q.newest,
    };
    match app.store.audit_records(&f).await {
        Ok(rows) => {
            let next = (rows.len() as i64 == limit)
                .then(|| rows.last().map(|r| r.record.seq))
                .flatten();
            let records: Vec<serde_json::Value> = rows.iter().map(|r| r.to_json()).collect();
            Json(serde_json::json!({ "records": records, "next_after_seq": next })).into_response()
        }
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointQuery {
    from_seq: Option<i64>,
    to_seq: Option<i64>,
}

async fn audit_checkpoints(
    State(app): State<Arc<App>>,
    Query(q): Query<CheckpointQuery>,
) -> Response {
    let (from, to) = (q.from_seq.unwrap_or(0), q.to_seq.unwrap_or(i64::MAX));
    let mut cps = match app.store.audit_checkpoints(from, to).await {
        Ok(cps) => cps,
        Err(e) => return store_err(e),
    };
    // The signed head (rewritten with every batch) covers the newest records too.
    match app.store.signed_head().await {
        Ok(Some(h)) if h.seq >= from && h.seq <= to && !cps.iter().any(|c| c.seq == h.seq) => {
            cps.push(h);
        }
        Ok(_) => {}
        Err(e) => return store_err(e),
    }
    Json(serde_json::json!({ "checkpoints": cps })).into_response()
}

/// Signs the chain head now and returns the checkpoint (an export then ends on a signature).
async fn sign_checkpoint(State(app): State<Arc<App>>) -> Response {
    if !app.recorder.sign_now().await {
        return crate::usage::audit_unavailable()
            .render(airlock_providers::dialect::Dialect::OpenAi);
    }
    match app.store.last_checkpoint().await {
        Ok(cp) => Json(serde_json::json!({ "checkpoint": cp })).into_response(),
        Err(e) => store_err(e),
    }
}

async fn audit_keys(State(app): State<Arc<App>>) -> Response {
    match airlock_audit::PublicKeys::from_dir(&app.cfg.keys_dir()) {
        Ok(keys) => {
            let list: Vec<serde_json::Value> = keys
                .list()
                .into_iter()
                .map(|(id, k)| serde_json::json!({ "id": id, "public_key": k }))
                .collect();
            Json(serde_json::json!({ "keys": list })).into_response()
        }
        Err(e) => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "keys_unavailable",
            e.to_string(),
        ),
    }
}
