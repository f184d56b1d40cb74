//! `GET /v1/models` and `GET /v1/models/{id}`: the models a token may use, from the provider's
//! own list for each credential it may use (cached five minutes). Asking a provider uses a key,
//! so each call upstream is audited like an inference request.

use crate::policy;
use crate::proxy::Gateway;
use crate::record::Record;
use crate::usage::audit_unavailable;
use crate::util::{now_ms, presented_token};
use crate::RequestId;
use airlock_providers::dialect::{ApiError, Dialect};
use airlock_store::UsageRow;
use airlock_token::Verified;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `GET /v1/models`: the models this token may use, in the client's dialect.
pub async fn models(app: Arc<Gateway>, req: Request<Body>) -> Response {
    let dialect = if req.headers().contains_key("anthropic-version") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    let parts = req.into_parts().0;
    match list_models(&app, &parts).await {
        Ok(ids) => {
            let body = match dialect {
                Dialect::OpenAi => serde_json::json!({
                    "object": "list",
                    "data": ids.iter().map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "airlock"})).collect::<Vec<_>>(),
                }),
                Dialect::Anthropic => serde_json::json!({
                    "data": ids.iter().map(|id| serde_json::json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})).collect::<Vec<_>>(),
                    "has_more": false,
                    "first_id": ids.first(),
                    "last_id": ids.last(),
                }),
            };
            axum::Json(body).into_response_ok()
        }
        Err(e) => {
            record_models_refusal(&app, &parts, &e).await;
            e.render(dialect)
        }
    }
}

/// A refused model list is audited like any refused request.
async fn record_models_refusal(app: &Arc<Gateway>, parts: &http::request::Parts, e: &ApiError) {
    let row = UsageRow {
        ts: now_ms(),
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        endpoint: airlock_secrets::redact_path(parts.uri.path())
            .chars()
            .take(200)
            .collect(),
        client_ip: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        ..Default::default()
    };
    let mut r = Record::start(app.recorder.clone(), row);
    if let Ok(t) = app.tokens.verifier.load().verify(
        presented_token(&parts.headers).unwrap_or_default(),
        SystemTime::now(),
    ) {
        r.row.token_id = Some(t.id.clone());
        r.row.subject = Some(t.subject.clone());
        r.cap_like_anonymous();
    }
    r.finish(
        e.status.as_u16(),
        if e.status.is_client_error() {
            "refused"
        } else {
            "failed"
        },
    );
    r.add_reason(&e.message);
    let _ = r.commit_refusal().await;
}

/// `GET /v1/models/{id}`.
pub async fn model_one(app: Arc<Gateway>, id: String, req: Request<Body>) -> Response {
    let parts = req.into_parts().0;
    match list_models(&app, &parts).await {
        Ok(ids) if ids.contains(&id) => axum::Json(
            serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "airlock"}),
        )
        .into_response_ok(),
        Ok(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model `{id}` is not available to this token"),
        )
        .render(Dialect::OpenAi),
        Err(e) => {
            record_models_refusal(&app, &parts, &e).await;
            e.render(Dialect::OpenAi)
        }
    }
}

trait OkResponse {
    fn into_response_ok(self) -> Response;
}

impl<T: serde::Serialize> OkResponse for axum::Json<T> {
    fn into_response_ok(self) -> Response {
        axum::response::IntoResponse::into_response(self)
    }
}

/// Who asks for a model list, for the audit records of the upstream calls it causes.
struct Asker {
    token: Arc<Verified>,
    request_id: String,
    client_ip: Option<String>,
}

async fn list_models(
    app: &Arc<Gateway>,
    req: &http::request::Parts,
) -> Result<Vec<String>, ApiError> {
    let token = app.tokens.authenticate(&req.headers)?;
    let asker = Asker {
        token: token.clone(),
        request_id: req
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        client_ip: req
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
    };
    let now = SystemTime::now();
    let set = app.creds.load();
    let mut out = std::collections::BTreeSet::new();
    for c in set
        .all
        .iter()
        // Only credentials the token may use at all: listing models upstream uses the key.
        .filter(|c| !c.suspended && c.env == token.env && token.allows_credential(&c.name))
    {
        let mut names: Vec<String> = c
            .models
            .iter()
            .filter(|g| g.is_literal())
            .map(|g| g.as_str().to_string())
            .collect();
        names.extend(upstream_models(app, c, &asker).await?);
        for m in names {
            if c.serves(&m)
                && policy::authorize(&app.tokens.verifier.load(), &token, c, &m, now).is_ok()
            {
                out.insert(m);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The provider's model list for a credential, cached for 5 minutes. A call upstream uses the
/// credential's key, so it is audited like an inference request (I5): the list is not returned
/// before its record is durable.
async fn upstream_models(
    app: &Arc<Gateway>,
    c: &Arc<crate::credentials::Credential>,
    asker: &Asker,
) -> Result<Vec<String>, ApiError> {
    if let Ok(cache) = app.model_lists.lock() {
        if let Some((at, list)) = cache.get(&c.name) {
            if at.elapsed() < Duration::from_secs(300) {
                return Ok(list.clone());
            }
        }
    }
    let Ok(secret) = c.secret(&app.creds, &asker.request_id).await else {
        return Ok(Vec::new());
    };
    let key = secret.fingerprint(&app.hmac);
    let Some(req) = crate::upstream::models_request(c, &secret) else {
        return Ok(Vec::new());
    };
    #[derive(Deserialize)]
    struct List {
        data: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        id: String,
    }
    let mut status = 502u16;
    let list = match tokio::time::timeout(Duration::from_secs(10), app.client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => {
            status = resp.status().as_u16();
            match tokio::time::timeout(
                Duration::from_secs(10),
                Limited::new(resp.into_body(), 4 << 20).collect(),
            )
            .await
            {
                Ok(Ok(b)) => serde_json::from_slice::<List>(&b.to_bytes())
                    .map(|l| l.data.into_iter().map(|i| i.id).collect())
                    .unwrap_or_default(),
                _ => Vec::new(),
            }
        }
        Ok(Ok(resp)) => {
            status = resp.status().as_u16();
            Vec::new()
        }
        _ => Vec::new(),
    };
    let record = airlock_audit::Record {
        ts: now_ms(),
        actor_kind: "token".into(),
        actor: Some(asker.token.id.clone()),
        subject: Some(asker.token.subject.clone()),
        action: "models.list".into(),
        target_kind: Some("credential".into()),
        target: Some(c.name.clone()),
        outcome: if (200..300).contains(&status) {
            "ok"
        } else {
            "failed"
        }
        .into(),
        request_id: Some(asker.request_id.clone()),
        client_ip: asker.client_ip.clone(),
        credential: Some(c.name.clone()),
        status: Some(status as i64),
        key: Some(key),
        ..Default::default()
    };
    if !app.recorder.write(None, record).await.may_answer() {
        return Err(audit_unavailable());
    }
    if let Ok(mut cache) = app.model_lists.lock() {
        cache.insert(c.name.clone(), (std::time::Instant::now(), list.clone()));
    }
    Ok(list)
}
