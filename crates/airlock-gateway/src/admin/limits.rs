//! Budgets and rate limits: set, list, remove.

use super::*;
use airlock_api::limits::{Budget, Budgets, NewBudget, NewRateLimit, RateLimit, RateLimits};
use airlock_api::Removed;
use airlock_store::{BudgetRow, RateLimitRow};

/// A rate limit as the API shows it.
fn rate_limit_view(r: &RateLimitRow) -> RateLimit {
    RateLimit {
        id: r.id.clone(),
        kind: r.kind.clone(),
        key: r.key.clone(),
        rpm: r.rpm,
        tpm: r.tpm,
        created_at: r.created_at,
    }
}

/// A budget as the API shows it, with its state in the current period when the server holds it.
fn budget_view(r: &BudgetRow, status: Option<&airlock_spend::budget::Status>) -> Budget {
    use airlock_spend::budget::usd;
    Budget {
        id: r.id.clone(),
        kind: r.kind.clone(),
        key: r.key.clone(),
        period: r.period.clone(),
        limit_nanos: r.limit_nanos,
        limit_usd: usd(r.limit_nanos),
        spent_nanos: status.map(|s| s.spent_nanos),
        spent_usd: status.map(|s| usd(s.spent_nanos)),
        reserved_nanos: status.map(|s| s.reserved_nanos),
        period_start: status
            .map(|s| airlock_token::rfc3339((s.period_start_ms / 1000).max(0) as u64)),
        created_at: r.created_at,
    }
}

/// US dollars to nano-dollars (at most nine decimals matter).
pub(super) fn usd_to_nanos(usd: f64) -> Result<i64, String> {
    if !(usd.is_finite() && usd > 0.0 && usd <= 1e9) {
        return Err(format!(
            "{usd} is not an amount between 0 and 1e9 US dollars"
        ));
    }
    Ok((usd * 1e9).round() as i64)
}

/// `rate-limit set`: requests and/or tokens per minute on a token, identity or credential.
pub(super) async fn set_rate_limit(
    State(app): State<Arc<Control>>,
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
    (StatusCode::CREATED, Json(rate_limit_view(&row))).into_response()
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

pub(super) async fn list_rate_limits(State(app): State<Arc<Control>>) -> Response {
    match app.store.list_rate_limits().await {
        Ok(rows) => Json(RateLimits {
            rate_limits: rows.iter().map(rate_limit_view).collect(),
        })
        .into_response(),
        Err(e) => store_err(e),
    }
}

pub(super) async fn remove_rate_limit(
    State(app): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Response {
    match app.store.delete_rate_limit(&id).await {
        Ok(true) => {
            if let Err(e) = app.rate_limits.reload(&app.store).await {
                return store_err(e);
            }
            Json(Removed::of(&id)).into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no rate limit `{id}`"),
        ),
        Err(e) => store_err(e),
    }
}

/// `budget set`: a spend cap on a token, identity or credential.
pub(super) async fn set_budget(
    State(app): State<Arc<Control>>,
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
        Json(budget_view(&row, status.iter().find(|s| s.id == row.id))),
    )
        .into_response()
}

pub(super) async fn list_budgets(State(app): State<Arc<Control>>) -> Response {
    match app.store.list_budgets().await {
        Ok(rows) => {
            let status = app.budgets.status();
            let budgets = rows
                .iter()
                .map(|r| budget_view(r, status.iter().find(|s| s.id == r.id)))
                .collect();
            Json(Budgets { budgets }).into_response()
        }
        Err(e) => store_err(e),
    }
}

pub(super) async fn remove_budget(
    State(app): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Response {
    match app.store.delete_budget(&id).await {
        Ok(true) => {
            if let Err(e) = app.budgets.reload(&app.store).await {
                return store_err(e);
            }
            Json(Removed::of(&id)).into_response()
        }
        Ok(false) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no budget `{id}`"),
        ),
        Err(e) => store_err(e),
    }
}
