//! Service accounts: create, list, revoke (with what they minted).

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewServiceAccount {
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
pub(super) async fn create_service_account(
    State(app): State<Arc<Control>>,
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
        app.issuer.max_ttl,
        &n.env,
        crate::identity::split_list(n.models),
        crate::identity::split_list(n.credentials),
        max_ttl,
    )
    .and_then(|mut s| {
        s.project = n.project;
        s.check(app.issuer.max_ttl)?;
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

pub(super) async fn list_service_accounts(State(app): State<Arc<Control>>) -> Response {
    match app.store.list_service_accounts().await {
        Ok(rows) => {
            let mut service_accounts = Vec::with_capacity(rows.len());
            for a in rows {
                let scope = match serde_json::from_value(a.scope) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        unreadable_scope("service account", &a.id, &e);
                        None
                    }
                };
                service_accounts.push(airlock_api::access::ServiceAccount {
                    id: a.id,
                    name: a.name,
                    scope,
                    created_at: a.created_at,
                    created_by: a.created_by,
                    last_used_at: a.last_used_at,
                    revoked_at: a.revoked_at,
                });
            }
            Json(airlock_api::access::ServiceAccounts { service_accounts }).into_response()
        }
        Err(e) => store_err(e),
    }
}

pub(super) async fn revoke_service_account(
    State(app): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Response {
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
            Json(airlock_api::access::KeyRevoked {
                id: Some(id.clone()),
                revoked: id,
                tokens_revoked: tokens,
            })
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
