//! Admin keys: create (owner only), list, revoke.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAdminKey {
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
pub(super) async fn create_admin_key_api(
    State(app): State<Arc<Control>>,
    Json(k): Json<NewAdminKey>,
) -> Response {
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
                app.issuer.max_ttl,
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
                airlock_audit::Record {
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
                },
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

pub(super) async fn list_admin_keys(State(app): State<Arc<Control>>) -> Response {
    match app.store.list_admin_keys().await {
        Ok(rows) => {
            let mut admin_keys = Vec::with_capacity(rows.len());
            for k in rows {
                let (grant, grant_unreadable) =
                    match k.grant.map(serde_json::from_value).transpose() {
                        Ok(g) => (g, false),
                        Err(e) => (None, unreadable_scope("admin key", &k.id, &e)),
                    };
                admin_keys.push(airlock_api::access::AdminKey {
                    id: k.id,
                    name: k.name,
                    role: k.role,
                    created_at: k.created_at,
                    revoked_at: k.revoked_at,
                    grant,
                    grant_unreadable,
                });
            }
            Json(airlock_api::access::AdminKeys { admin_keys }).into_response()
        }
        Err(e) => store_err(e),
    }
}

pub(super) async fn revoke_admin_key(
    State(app): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Response {
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
            Json(airlock_api::access::KeyRevoked {
                revoked: id,
                id: None,
                tokens_revoked: tokens,
            })
            .into_response()
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
