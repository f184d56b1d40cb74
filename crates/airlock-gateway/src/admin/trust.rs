//! Trust policies for token exchange: add, list, remove (with what they granted).

use super::*;
use crate::oidc::Compile;
use airlock_api::trust::{PolicyRemoved, TrustPolicies};

/// `trust add`: a policy in the same shape as a `[[trust]]` table.
pub(super) async fn add_trust_policy(
    State(app): State<Arc<Control>>,
    axum::Extension(c): axum::Extension<Caller>,
    Json(p): Json<crate::oidc::TrustPolicy>,
) -> Response {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "invalid_request", m);
    if app.trust.configured.iter().any(|t| t.name == p.name) {
        return err(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "trust policy `{}` is defined in the configuration file",
                p.name
            ),
        );
    }
    let compiled = match p.clone().compile("api", app.issuer.max_ttl) {
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

pub(super) async fn list_trust_policies(State(app): State<Arc<Control>>) -> Response {
    let trust_policies = app
        .trust
        .policies
        .load()
        .iter()
        .map(|c| c.listing())
        .collect();
    Json(TrustPolicies { trust_policies }).into_response()
}

pub(super) async fn remove_trust_policy(
    State(app): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Response {
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
            if app.trust.configured.iter().any(|t| t.name == name) {
                return Json(PolicyRemoved {
                    removed: name.clone(),
                    name,
                    tokens_revoked: 0,
                })
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
            Json(PolicyRemoved {
                removed: name.clone(),
                name,
                tokens_revoked: tokens,
            })
            .into_response()
        }
        Ok(false) if app.trust.configured.iter().any(|t| t.name == name) => err(
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
