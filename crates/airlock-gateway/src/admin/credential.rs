//! Credentials: add, list, show, remove, verify, rotate, suspend and resume; the secret stores' doctor and the KEK rotation; matching found keys against the inventory.

use super::*;
use airlock_api::credentials as api;
use airlock_store::RotationRow;

/// The API's view of a stored credential.
fn credential(row: &CredentialRow, rotation: Option<api::KeyAge>) -> api::Credential {
    api::Credential {
        name: row.name.clone(),
        provider: row.provider.clone(),
        env: row.env.clone(),
        secret_ref: row.secret_ref.clone(),
        base_url: row.base_url.clone(),
        models: row.models.clone(),
        priority: row.priority,
        fingerprint: row.fingerprint.clone(),
        last4: row.last4.clone(),
        created_at: row.created_at,
        rotated_at: row.rotated_at,
        last_used_at: row.last_used_at,
        suspended: row.suspended,
        secret_version: row.secret_version.clone(),
        rotation,
    }
}

/// The API's view of a stored rotation.
pub(crate) fn rotation(r: RotationRow) -> api::Rotation {
    api::Rotation {
        id: r.id,
        credential: r.credential,
        source: r.source,
        state: r.state,
        reason: r.reason,
        old_fingerprint: r.old_fingerprint,
        old_last4: r.old_last4,
        old_version: r.old_version,
        old_ref: r.old_ref,
        new_fingerprint: r.new_fingerprint,
        new_last4: r.new_last4,
        new_version: r.new_version,
        started_at: r.started_at,
        tested_at: r.tested_at,
        promoted_at: r.promoted_at,
        confirmed_at: r.confirmed_at,
    }
}

fn counts(v: Vec<airlock_store::Count>) -> Vec<api::Count> {
    v.into_iter()
        .map(|c| api::Count {
            name: c.name,
            requests: c.requests,
        })
        .collect()
}

pub(super) async fn add_credential(
    State(app): State<Arc<Control>>,
    Json(a): Json<api::NewCredential>,
) -> Response {
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
            let secret = match airlock_secrets::value_to_secret(v.take(), "the secret given") {
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
    (StatusCode::CREATED, Json(credential(&row, None))).into_response()
}

pub(super) async fn list_credentials(State(app): State<Arc<Control>>) -> Response {
    match app.store.list_credentials().await {
        Ok(rows) => {
            let credentials = rows
                .iter()
                .map(|r| credential(r, Some(key_age(&app, r))))
                .collect();
            Json(api::Credentials { credentials }).into_response()
        }
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShowQuery {
    window_days: Option<u32>,
}

/// Age of a credential's key against `rotation.max_age_days`.
pub(super) fn key_age(app: &Control, row: &CredentialRow) -> api::KeyAge {
    let since = row.rotated_at.unwrap_or(row.created_at);
    let age_ms = (now_ms() - since).max(0);
    let max = i64::from(app.rotation_max_age_days);
    api::KeyAge {
        key_age_days: age_ms / 86_400_000,
        max_age_days: max,
        overdue: age_ms > max * 86_400_000,
        state: None,
    }
}

pub(super) async fn show_credential(
    State(app): State<Arc<Control>>,
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
            let rotations = app.store.rotations(&name, 20).await.unwrap_or_default();
            let mut age = key_age(&app, &row);
            age.state = Some(match rotations
                .iter()
                .find(|r| r.state == "promoted" || r.state == "confirmed")
            {
                Some(r) if r.state == "confirmed" => "rotated, old key confirmed dead".into(),
                Some(_) => "rotated, waiting for the old key to be revoked at the provider (then: credential verify --old)".into(),
                None => "never rotated".into(),
            });
            Json(api::CredentialDetail {
                credential: credential(&row, Some(age)),
                rotations: rotations.into_iter().map(rotation).collect(),
                usage: api::Totals {
                    requests: totals.requests,
                    input_tokens: totals.input_tokens,
                    output_tokens: totals.output_tokens,
                },
                activity: api::Activity {
                    window_days,
                    requests: activity.requests,
                    input_tokens: activity.input_tokens,
                    output_tokens: activity.output_tokens,
                    cost_micros: activity.cost_micros,
                    identities: counts(activity.identities),
                    tokens: counts(activity.tokens),
                    client_ips: counts(activity.client_ips),
                },
            })
            .into_response()
        }
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}`"),
        ),
        Err(e) => store_err(e),
    }
}

pub(super) async fn remove_credential(
    State(app): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Response {
    match app.store.delete_credential(&name).await {
        Ok(true) => {
            if let Err(e) = app.creds.reload().await {
                return store_err(e);
            }
            tracing::info!(credential = %name, "credential removed");
            Json(airlock_api::Removed::of(&name)).into_response()
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
pub(super) async fn verify_credential(
    State(app): State<Arc<Control>>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyBody {
    #[serde(default)]
    old: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateBody {
    /// The new key (sealed credentials). Moved into a `Secret` at once.
    secret_value: Option<String>,
}

/// `credential rotate`: stage → test → promote; a failed test is answered with the rotation
/// in state `failed` (nothing changed).
pub(super) async fn rotate_credential(
    State(app): State<Arc<Control>>,
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
        Ok(row) => Json(rotation(row)).into_response(),
        Err(e) => err(e.status, e.code, e.message),
    }
}

/// `doctor`: every store answers, the KEK wraps and unwraps, every credential's key reads and
/// its provider accepts it.
pub(super) async fn doctor(State(app): State<Arc<Control>>) -> Response {
    let mut checks: Vec<api::Check> = app
        .creds
        .secrets
        .checks()
        .await
        .into_iter()
        .map(|c| api::Check {
            name: c.name,
            ok: c.ok,
            detail: c.detail,
            status: None,
            reference: None,
        })
        .collect();
    // Each credential as `credential verify` sees it: the key read from its store now, then
    // the provider's cheapest authenticated call.
    let creds = app.creds.load_full();
    let reads = creds.all.iter().map(|c| {
        let app = app.clone();
        async move {
            let v = crate::upstream::verify(&app.creds, &app.client, c).await;
            let mut detail = v.detail;
            if let Some(fp) = &v.fingerprint {
                detail.push_str(&format!(
                    "; read from {}{} (fingerprint {fp})",
                    c.reference().store(),
                    v.version
                        .as_deref()
                        .map(|x| format!(", version {x}"))
                        .unwrap_or_default()
                ));
            }
            api::Check {
                name: format!("credential {}", c.name),
                ok: v.status == "ok",
                status: Some(v.status),
                detail,
                reference: Some(c.reference().to_string()),
            }
        }
    });
    checks.extend(futures_util::future::join_all(reads).await);
    let ok = checks.iter().all(|c| c.ok);
    Json(api::Doctor { ok, checks }).into_response()
}

/// `kek rotate`: a new KEK version, every sealed data key rewrapped under it.
pub(super) async fn rotate_kek(State(app): State<Arc<Control>>) -> Response {
    match app.creds.secrets.rotate_kek().await {
        Ok(report) => {
            tracing::info!(kek = %report.kek, rewrapped = report.rewrapped, failed = report.failed.len(), "KEK rotated");
            let status = if report.failed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::MULTI_STATUS
            };
            (
                status,
                Json(api::KekRotation {
                    kek: report.kek,
                    version: report.version,
                    rewrapped: report.rewrapped as u64,
                    failed: report.failed,
                }),
            )
                .into_response()
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

pub(super) async fn suspend_credential(
    State(app): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Response {
    set_suspended(&app, name, true).await
}

pub(super) async fn resume_credential(
    State(app): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Response {
    set_suspended(&app, name, false).await
}

/// Suspends or resumes a credential: a suspended credential serves nothing until resumed.
pub(super) async fn set_suspended(app: &Arc<Control>, name: String, suspended: bool) -> Response {
    match app.store.set_suspended(&name, suspended).await {
        Ok(true) => {
            if let Err(e) = app.creds.reload().await {
                return store_err(e);
            }
            tracing::warn!(credential = %name, suspended, "credential suspension changed");
            Json(api::Suspension {
                credential: name,
                suspended,
            })
            .into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}`"),
        ),
        Err(e) => store_err(e),
    }
}

pub(super) async fn match_secrets(
    State(app): State<Arc<Control>>,
    Json(m): Json<api::MatchRequest>,
) -> Response {
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
            let s = Secret::new(c.take());
            let fp = s.fingerprint(&app.hmac);
            rows.iter()
                .find(|r| r.fingerprint.as_deref() == Some(fp.as_str()))
                .map(|r| r.name.clone())
        })
        .collect();
    Json(api::Matches { matches }).into_response()
}
