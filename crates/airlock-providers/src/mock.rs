//! `airlock mock-provider`: a stand-in for OpenAI and Anthropic that tests and the demo run
//! against. It checks the provider key, answers chat completions (plain and streaming, with
//! `stream_options.include_usage`), completions, embeddings (float and base64), responses,
//! models, and Anthropic messages (plain and the full streaming event sequence) with
//! deterministic usage, and refuses a wrong key with the provider's own 401 body.
//!
//! Paths are matched by suffix, so any base URL works (`/v1/chat/completions`,
//! `/openai/deployments/x/chat/completions`). `GET /mock/stats` reports what it saw (header
//! names, whether an airlock token arrived, whether the key was right), never key values.

use airlock_secrets::Secret;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Mock behaviour.
pub struct MockOptions {
    /// Accepted provider keys; empty accepts any. Several play a rotation: the provider knows
    /// the old and the new key until the old one is revoked (`POST /mock/revoke?index=N`).
    pub expect_keys: Vec<Secret>,
    /// Answer every inference request with this status (provider-shaped error).
    pub fail_status: Option<u16>,
    /// Pause between streamed chunks.
    pub chunk_delay: Duration,
    /// Name echoed in replies, so tests can tell mocks apart.
    pub name: String,
    /// Models listed by `/v1/models`.
    pub models: Vec<String>,
}

struct Mock {
    o: MockOptions,
    requests: AtomicU64,
    last: Mutex<Value>,
    /// Requests that arrived with each expected key.
    key_counts: Vec<AtomicU64>,
    /// Keys the provider no longer accepts.
    revoked: Mutex<Vec<bool>>,
}

/// The mock's router.
pub fn router(o: MockOptions) -> Router {
    let n = o.expect_keys.len();
    let m = Arc::new(Mock {
        o,
        requests: AtomicU64::new(0),
        last: Mutex::new(Value::Null),
        key_counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
        revoked: Mutex::new(vec![false; n]),
    });
    Router::new().fallback(handle).with_state(m)
}

fn reply_text(name: &str) -> String {
    format!("Hello from the airlock mock provider {name}.")
}

fn words(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as i64,
        Value::Array(a) => a.iter().map(words).sum(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "content" | "text" | "input" | "prompt" | "messages" | "system"
                )
            })
            .map(|(_, v)| words(v))
            .sum(),
        _ => 0,
    }
}

/// Whether the request's key is accepted (`ok`, `missing`, `wrong`, `revoked`) and which of
/// the expected keys it is.
fn key_state(m: &Mock, h: &HeaderMap) -> (&'static str, Option<usize>) {
    let got = h
        .get("x-api-key")
        .or_else(|| h.get("api-key"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
    if m.o.expect_keys.is_empty() {
        return ("ok", None);
    }
    let Some(g) = got else {
        return ("missing", None);
    };
    let g = Secret::new(g);
    let Some(i) = m.o.expect_keys.iter().position(|k| k.ct_eq(&g)) else {
        return ("wrong", None);
    };
    m.key_counts[i].fetch_add(1, Ordering::Relaxed);
    let revoked = m.revoked.lock().map(|r| r[i]).unwrap_or(true);
    (if revoked { "revoked" } else { "ok" }, Some(i))
}

fn anthropic_error(status: StatusCode, kind: &str, msg: &str) -> Response {
    (
        status,
        axum::Json(json!({"type":"error","error":{"type":kind,"message":msg}})),
    )
        .into_response()
}

fn openai_error(status: StatusCode, kind: &str, code: Option<&str>, msg: &str) -> Response {
    (
        status,
        axum::Json(json!({"error":{"message":msg,"type":kind,"param":null,"code":code}})),
    )
        .into_response()
}

async fn handle(State(m): State<Arc<Mock>>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if path == "/mock/stats" {
        let last = m.last.lock().map(|l| l.clone()).unwrap_or(Value::Null);
        let counts: Vec<u64> = m
            .key_counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        return axum::Json(json!({"requests": m.requests.load(Ordering::Relaxed), "last": last, "key_counts": counts}))
            .into_response();
    }
    if path == "/mock/revoke" {
        let i = parts
            .uri
            .query()
            .and_then(|q| q.strip_prefix("index="))
            .and_then(|v| v.parse::<usize>().ok());
        let done = match (i, m.revoked.lock()) {
            (Some(i), Ok(mut r)) if i < r.len() => {
                r[i] = true;
                true
            }
            _ => false,
        };
        return if done {
            axum::Json(json!({"revoked": i})).into_response()
        } else {
            (StatusCode::BAD_REQUEST, "index= names an expected key").into_response()
        };
    }
    m.requests.fetch_add(1, Ordering::Relaxed);
    let anthropic = path.ends_with("/messages")
        || path.ends_with("/messages/count_tokens")
        || parts.headers.contains_key("anthropic-version");
    let (ks, key_index) = key_state(&m, &parts.headers);
    let airlock_token_seen = parts
        .headers
        .values()
        .any(|v| v.as_bytes().windows(8).any(|w| w == b"alk_tok_"));
    if let Ok(mut l) = m.last.lock() {
        *l = json!({
            "path": path,
            "headers": parts.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            "key": ks,
            "key_index": key_index,
            "airlock_token_seen": airlock_token_seen,
            "anthropic_version": parts.headers.get("anthropic-version").and_then(|v| v.to_str().ok()),
            "accept_encoding": parts.headers.get("accept-encoding").and_then(|v| v.to_str().ok()),
        });
    }
    if ks != "ok" {
        return if anthropic {
            anthropic_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
            )
        } else {
            openai_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided. You can find your API key in your provider's console.",
            )
        };
    }
    if path.ends_with("/models") {
        let data: Vec<Value> = m.o.models.iter().map(|id| json!({"id": id, "object": "model", "created": 1700000000, "owned_by": "mock"})).collect();
        return axum::Json(json!({"object": "list", "data": data})).into_response();
    }
    if let Some(s) = m.o.fail_status {
        let st = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let msg = format!("mock {} answers {s} as configured", m.o.name);
        return if anthropic {
            anthropic_error(
                st,
                if s == 429 {
                    "rate_limit_error"
                } else if s < 500 {
                    "invalid_request_error"
                } else {
                    "api_error"
                },
                &msg,
            )
        } else {
            openai_error(
                st,
                if s < 500 {
                    "invalid_request_error"
                } else {
                    "server_error"
                },
                None,
                &msg,
            )
        };
    }
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let req: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "mock: body is not JSON",
            )
        }
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let input = words(&req).max(1);
    let text = reply_text(&m.o.name);
    let output = text.split_whitespace().count() as i64;
    if path.ends_with("/messages/count_tokens") {
        return axum::Json(json!({"input_tokens": input})).into_response();
    }
    if path.ends_with("/messages") {
        return if stream {
            anthropic_stream(&m, &model, input, &text)
        } else {
            axum::Json(json!({
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": output}
            }))
            .into_response()
        };
    }
    if path.ends_with("/embeddings") {
        let n = match req.get("input") {
            Some(Value::Array(a)) => a.len().max(1),
            _ => 1,
        };
        let b64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let data: Vec<Value> = (0..n)
            .map(|i| {
                let v: Vec<f32> = (0..8).map(|j| ((i * 8 + j) as f32) / 10.0).collect();
                let emb = if b64 {
                    let raw: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(raw))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": emb})
            })
            .collect();
        return axum::Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": input, "total_tokens": input}})).into_response();
    }
    if path.ends_with("/responses") {
        let usage =
            json!({"input_tokens": input, "output_tokens": output, "total_tokens": input + output});
        let resp = json!({
            "id": "resp_mock", "object": "response", "created_at": 1700000000, "status": "completed", "model": model,
            "output": [{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": usage
        });
        if stream {
            let events = vec![
                (
                    "response.created",
                    json!({"type": "response.created", "response": {"id": "resp_mock", "status": "in_progress", "usage": null}}),
                ),
                (
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "delta": text}),
                ),
                (
                    "response.completed",
                    json!({"type": "response.completed", "response": resp}),
                ),
            ];
            return sse(
                m.o.chunk_delay,
                events
                    .into_iter()
                    .map(|(e, d)| format!("event: {e}\ndata: {d}\n\n"))
                    .collect(),
            );
        }
        return axum::Json(resp).into_response();
    }
    let chat = path.ends_with("/chat/completions");
    if !chat && !path.ends_with("/completions") {
        return openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            "mock: unknown path",
        );
    }
    let usage = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
    if !stream {
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": null})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "stop", "logprobs": null})
        };
        return axum::Json(json!({
            "id": "chatcmpl-mock", "object": if chat { "chat.completion" } else { "text_completion" },
            "created": 1700000000, "model": model, "choices": [choice], "usage": usage
        })).into_response();
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut frames = Vec::new();
    let obj = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let pieces: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    for (i, p) in pieces.iter().enumerate() {
        let choice = if chat {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": p})
            } else {
                json!({"content": p})
            };
            json!({"index": 0, "delta": delta, "finish_reason": null})
        } else {
            json!({"index": 0, "text": p, "finish_reason": null})
        };
        let mut c = json!({"id": "chatcmpl-mock", "object": obj, "created": 1700000000, "model": model, "choices": [choice]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        frames.push(format!("data: {c}\n\n"));
    }
    let fin = if chat {
        json!({"index": 0, "delta": {}, "finish_reason": "stop"})
    } else {
        json!({"index": 0, "text": "", "finish_reason": "stop"})
    };
    frames.push(format!("data: {}\n\n", json!({"id": "chatcmpl-mock", "object": obj, "created": 1700000000, "model": model, "choices": [fin]})));
    if include_usage {
        frames.push(format!("data: {}\n\n", json!({"id": "chatcmpl-mock", "object": obj, "created": 1700000000, "model": model, "choices": [], "usage": usage})));
    }
    frames.push("data: [DONE]\n\n".into());
    sse(m.o.chunk_delay, frames)
}

fn anthropic_stream(m: &Mock, model: &str, input: i64, text: &str) -> Response {
    let output = text.split_whitespace().count() as i64;
    let mut ev: Vec<(String, Value)> = vec![
        (
            "message_start".into(),
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        (
            "content_block_start".into(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping".into(), json!({"type": "ping"})),
    ];
    for p in text.split_inclusive(' ') {
        ev.push(("content_block_delta".into(), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
    }
    ev.push((
        "content_block_stop".into(),
        json!({"type": "content_block_stop", "index": 0}),
    ));
    ev.push(("message_delta".into(), json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}})));
    ev.push(("message_stop".into(), json!({"type": "message_stop"})));
    sse(
        m.o.chunk_delay,
        ev.into_iter()
            .map(|(e, d)| format!("event: {e}\ndata: {d}\n\n"))
            .collect(),
    )
}

fn sse(delay: Duration, frames: Vec<String>) -> Response {
    let stream = futures_util::stream::unfold(
        (frames.into_iter(), true),
        move |(mut it, first)| async move {
            let f = it.next()?;
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(f)),
                (it, false),
            ))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .header("x-request-id", "req_mock")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
