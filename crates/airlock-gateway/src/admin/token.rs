//! Tokens: mint within the caller's grant, list, revoke.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Mint {
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

pub(super) async fn mint_token(
    State(app): State<Arc<Control>>,
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
pub(super) struct ListTokens {
    #[serde(default)]
    all: bool,
}

pub(super) async fn list_tokens(
    State(app): State<Arc<Control>>,
    Query(q): Query<ListTokens>,
) -> Response {
    match app.store.list_tokens(q.all, now_ms() / 1000).await {
        Ok(rows) => Json(airlock_api::tokens::Tokens {
            tokens: rows.into_iter().map(token_view).collect(),
        })
        .into_response(),
        Err(e) => store_err(e),
    }
}

pub(super) async fn revoke_token(
    State(app): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Response {
    // Held across the write and the in-memory update so a periodic reload cannot read the
    // database before the write and then replace the set after the insert.
    let serial = app.tokens.serial().await;
    match app.store.revoke_token(&id, now_ms()).await {
        Ok(true) => {
            // Takes effect at once: the in-memory set is what the hot path checks.
            app.tokens.mark_revoked(&serial, &id);
            tracing::info!(token_id = %id, "token revoked");
            Json(airlock_api::tokens::Revoked { revoked: id }).into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token with id `{id}` was minted by this server"),
        ),
        Err(e) => store_err(e),
    }
}

/// A token's metadata as the API shows it.
fn token_view(r: airlock_store::TokenRow) -> airlock_api::tokens::Token {
    airlock_api::tokens::Token {
        id: r.id,
        subject: r.subject,
        env: r.env,
        models: r.models,
        credentials: r.credentials,
        key_id: r.key_id,
        created_at: r.created_at,
        expires_at: r.expires_at,
        revoked_at: r.revoked_at,
        minted_by: r.minted_by,
        claims: r.claims,
    }
}
