//! Usage: recent requests, the usage report, and the test clock of the anomaly detector.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClockReq {
    advance_secs: i64,
}

/// Moves the anomaly detector's clock (only on a server started with `AIRLOCK_TEST_CLOCK=1`).
pub(super) async fn advance_test_clock(
    State(app): State<Arc<Control>>,
    Json(c): Json<ClockReq>,
) -> Response {
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
pub(super) struct Recent {
    limit: Option<i64>,
}

pub(super) async fn recent_usage(
    State(app): State<Arc<Control>>,
    Query(q): Query<Recent>,
) -> Response {
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
pub(super) struct UsageQuery {
    by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    bucket: Option<String>,
}

/// `airlock usage`: requests, tokens and cost grouped by one dimension, optionally per hour
/// or day (UTC).
pub(super) async fn usage_report(
    State(app): State<Arc<Control>>,
    Query(q): Query<UsageQuery>,
) -> Response {
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
