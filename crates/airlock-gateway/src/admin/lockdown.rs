//! Incident lockdown and report.

use super::*;

pub(super) async fn incident_lockdown(
    State(app): State<Arc<Control>>,
    Json(req): Json<crate::incident::LockdownRequest>,
) -> Response {
    match crate::incident::lockdown(&app.responder, req).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => err(e.status, e.code, e.message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    since: String,
    until: Option<String>,
}

pub(super) async fn incident_report(
    State(app): State<Arc<Control>>,
    Query(q): Query<ReportQuery>,
) -> Response {
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
