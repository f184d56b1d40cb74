//! Budgets and rate limits: set, list, remove.

use super::*;

/// US dollars to nano-dollars (at most nine decimals matter).
pub(super) fn usd_to_nanos(usd: f64) -> Result<i64, String> {
    if !(usd.is_finite() && usd > 0.0 && usd <= 1e9) {
        return Err(format!(
            "{usd} is not an amount between 0 and 1e9 US dollars"
        ));
    }
    Ok((usd * 1e9).round() as i64)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRateLimit {
    kind: String,
    key: String,
    rpm: Option<i64>,
    tpm: Option<i64>,
}

/// `rate-limit set`: requests and/or tokens per minute on a token, identity or credential.
pub(super) async fn set_rate_limit(
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
pub(super) fn check_target(kind: &str, key: &str) -> Result<(), String> {
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

pub(super) async fn list_rate_limits(State(app): State<Arc<App>>) -> Response {
    match app.store.list_rate_limits().await {
        Ok(rows) => Json(serde_json::json!({
            "rate_limits": rows.iter().map(airlock_spend::ratelimit::describe).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_err(e),
    }
}

pub(super) async fn remove_rate_limit(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Response {
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
pub(super) struct NewBudget {
    kind: String,
    key: String,
    period: String,
    usd: f64,
}

/// `budget set`: a spend cap on a token, identity or credential.
pub(super) async fn set_budget(
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

pub(super) async fn list_budgets(State(app): State<Arc<App>>) -> Response {
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

pub(super) async fn remove_budget(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
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
