//! The audit log: records, checkpoints, a checkpoint signed on demand, the public keys.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
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

pub(super) async fn audit_records(
    State(app): State<Arc<Control>>,
    Query(q): Query<AuditQuery>,
) -> Response {
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
pub(super) struct CheckpointQuery {
    from_seq: Option<i64>,
    to_seq: Option<i64>,
}

pub(super) async fn audit_checkpoints(
    State(app): State<Arc<Control>>,
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
pub(super) async fn sign_checkpoint(State(app): State<Arc<Control>>) -> Response {
    if !app.recorder.sign_now().await {
        return crate::usage::audit_unavailable()
            .render(airlock_providers::dialect::Dialect::OpenAi);
    }
    match app.store.last_checkpoint().await {
        Ok(cp) => Json(serde_json::json!({ "checkpoint": cp })).into_response(),
        Err(e) => store_err(e),
    }
}

pub(super) async fn audit_keys(State(app): State<Arc<Control>>) -> Response {
    match airlock_audit::PublicKeys::from_dir(&app.responder.keys_dir) {
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
