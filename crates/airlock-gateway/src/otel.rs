//! OpenTelemetry traces over OTLP/HTTP (JSON encoding), off unless `[otel] endpoint` is set.
//!
//! One span per proxied request, built when its record is taken (so every ending, including a
//! client that left, has its span) from the usage row airlock keeps anyway, following the
//! GenAI semantic conventions: span kind CLIENT, name `{gen_ai.operation.name}
//! {gen_ai.request.model}`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens` / `output_tokens`, `error.type`, plus `airlock.*` attributes
//! (request id, token id, identity, credential, environment, cost in nano-dollars, attempts).
//! A W3C `traceparent` from the client makes the span a child of the caller's trace.
//!
//! A span never carries a key, a token or a header; the prompt (`gen_ai.input.messages`) only
//! with `capture_prompts = true`.
//!
//! Written here rather than with the `opentelemetry` SDK: the SDK's batch processor runs
//! exporters on a thread of its own outside tokio (where a hyper client has no reactor), and the
//! OTLP crate brings prost, a metrics pipeline and a second span model for what is one span per
//! request already assembled from the usage row. This is the OTLP/HTTP JSON mapping
//! (opentelemetry-proto's `ExportTraceServiceRequest`) on the existing client, batched, bounded
//! and dropping (counted) rather than blocking when the collector is slow.

use airlock_store::UsageRow;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Spans waiting for export at most; more are dropped and counted.
const QUEUE: usize = 8192;
/// Spans per export request at most.
const BATCH: usize = 512;
/// A partial batch waits at most this long.
const LINGER: Duration = Duration::from_secs(1);
/// A captured prompt is cut at this many bytes.
const PROMPT_MAX: usize = 16 * 1024;

/// The trace a request belongs to.
#[derive(Clone, Debug)]
pub struct TraceCtx {
    /// 32 hex digits.
    pub trace_id: String,
    /// The caller's span (16 hex digits), when it sent a `traceparent`.
    pub parent: Option<String>,
    /// This request's span id.
    pub span_id: String,
}

impl TraceCtx {
    /// From a W3C `traceparent` header (`00-<trace>-<parent>-<flags>`), or a new trace.
    pub fn from_header(h: Option<&http::HeaderValue>) -> Self {
        let span_id = random_hex(8);
        if let Some((trace_id, parent)) = h.and_then(|v| v.to_str().ok()).and_then(parse) {
            return TraceCtx {
                trace_id,
                parent: Some(parent),
                span_id,
            };
        }
        TraceCtx {
            trace_id: random_hex(16),
            parent: None,
            span_id,
        }
    }
}

fn parse(v: &str) -> Option<(String, String)> {
    let p: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    // Version 00 has exactly four fields; a later version may add some (W3C: parse the first four).
    if p.len() < 4 || !hex(p[0], 2) || p[0] == "ff" || (p[0] == "00" && p.len() != 4) {
        return None;
    }
    if !hex(p[1], 32) || !hex(p[2], 16) || !hex(p[3], 2) {
        return None;
    }
    if p[1].bytes().all(|b| b == b'0') || p[2].bytes().all(|b| b == b'0') {
        return None;
    }
    Some((p[1].to_string(), p[2].to_string()))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Export counts for `/metrics`.
#[derive(Default)]
pub struct Counts {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped: queue full, or the collector failed.
    pub dropped: AtomicU64,
}

/// The span exporter.
pub struct Tracer {
    tx: mpsc::Sender<Value>,
    /// Whether prompts go into spans.
    pub capture_prompts: bool,
    /// Export counts.
    pub counts: Arc<Counts>,
}

impl Tracer {
    /// Starts the exporter task posting to `{endpoint}/v1/traces`.
    pub fn start(
        endpoint: &str,
        service_name: &str,
        capture_prompts: bool,
        timeout: Duration,
        client: crate::util::HttpClient,
    ) -> Result<Arc<Self>, String> {
        let url: http::Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            .parse()
            .map_err(|_| format!("[otel] endpoint `{endpoint}` is not a URL"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        tokio::spawn(export(
            rx,
            url,
            service_name.to_string(),
            timeout,
            client,
            counts.clone(),
        ));
        Ok(Arc::new(Tracer {
            tx,
            capture_prompts,
            counts,
        }))
    }

    /// Queues the span of a finished request.
    pub fn record(
        &self,
        row: &UsageRow,
        trace: &TraceCtx,
        took: Duration,
        reason: Option<&str>,
        prompt: Option<&str>,
    ) {
        let end = SystemTime::now();
        let start = end.checked_sub(took).unwrap_or(end);
        let ns = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos().to_string())
                .unwrap_or_else(|_| "0".into())
        };
        let op = operation(&row.endpoint);
        let model = row.model.as_deref().unwrap_or("");
        let mut attrs = vec![
            s("gen_ai.operation.name", op),
            s("airlock.request_id", &row.request_id),
            s("airlock.outcome", &row.outcome),
            s("url.path", &row.endpoint),
            i("http.response.status_code", row.status),
            i("airlock.attempts", row.attempts),
            b("airlock.stream", row.stream),
        ];
        if let Some(p) = row.provider.as_deref() {
            attrs.push(s("gen_ai.provider.name", provider_name(p)));
        }
        if !model.is_empty() {
            attrs.push(s("gen_ai.request.model", model));
        }
        for (k, v) in [
            ("gen_ai.usage.input_tokens", row.input_tokens),
            ("gen_ai.usage.output_tokens", row.output_tokens),
            ("airlock.usage.cached_input_tokens", row.cached_tokens),
            ("airlock.cost_nanos", row.cost_nanos),
            ("airlock.ttfb_ms", row.ttfb_ms),
        ] {
            if let Some(v) = v {
                attrs.push(i(k, v));
            }
        }
        for (k, v) in [
            ("airlock.token_id", &row.token_id),
            ("airlock.identity", &row.subject),
            ("airlock.credential", &row.credential),
            ("airlock.env", &row.env),
            ("client.address", &row.client_ip),
        ] {
            if let Some(v) = v {
                attrs.push(s(k, v));
            }
        }
        let failed = row.status >= 400 || row.outcome != "ok";
        if failed {
            attrs.push(s("error.type", &row.outcome));
        }
        if let Some(p) = prompt {
            attrs.push(s("gen_ai.input.messages", p));
        }
        let mut span = json!({
            "traceId": trace.trace_id,
            "spanId": trace.span_id,
            "name": if model.is_empty() { op.to_string() } else { format!("{op} {model}") },
            "kind": 3,
            "startTimeUnixNano": ns(start),
            "endTimeUnixNano": ns(end),
            "attributes": attrs,
            "status": if failed {
                json!({"code": 2, "message": reason.unwrap_or(&row.outcome).chars().take(300).collect::<String>()})
            } else {
                json!({"code": 1})
            },
        });
        if let Some(p) = &trace.parent {
            span["parentSpanId"] = json!(p);
        }
        if self.tx.try_send(span).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The part of a request body that is the prompt (`messages`, `input`, `prompt`, `system`),
/// as JSON text cut at 16 KiB; only called with `capture_prompts = true`.
pub fn prompt_of(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut parts = serde_json::Map::new();
    for k in ["system", "messages", "input", "prompt"] {
        if let Some(x) = v.get(k) {
            parts.insert(k.to_string(), x.clone());
        }
    }
    if parts.is_empty() {
        return None;
    }
    let mut text = Value::Object(parts).to_string();
    if text.len() > PROMPT_MAX {
        let mut cut = PROMPT_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Some(text)
}

fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "/v1/chat/completions" | "/v1/messages" | "/v1/responses" => "chat",
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        "/v1/messages/count_tokens" => "count_tokens",
        _ => "request",
    }
}

/// `gen_ai.provider.name` values of the conventions where one exists.
fn provider_name(p: &str) -> &str {
    match p {
        "azure" => "azure.ai.openai",
        other => other,
    }
}

fn s(k: &str, v: &str) -> Value {
    json!({"key": k, "value": {"stringValue": v}})
}

fn i(k: &str, v: i64) -> Value {
    // OTLP/JSON encodes 64-bit integers as strings.
    json!({"key": k, "value": {"intValue": v.to_string()}})
}

fn b(k: &str, v: bool) -> Value {
    json!({"key": k, "value": {"boolValue": v}})
}

async fn export(
    mut rx: mpsc::Receiver<Value>,
    url: http::Uri,
    service: String,
    timeout: Duration,
    client: crate::util::HttpClient,
    counts: Arc<Counts>,
) {
    let resource = json!({"attributes": [
        s("service.name", &service),
        s("service.version", env!("CARGO_PKG_VERSION")),
    ]});
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut spans = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while spans.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => spans.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = spans.len() as u64;
        let body = json!({"resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{"scope": {"name": "airlock", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
        }]});
        let body = Bytes::from(body.to_string());
        let mut ok = false;
        // One retry after a second for a collector that is restarting; then the batch is
        // dropped (counted), so a dead collector never holds memory.
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let req = http::Request::builder()
                .method(http::Method::POST)
                .uri(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(body.clone()));
            let Ok(req) = req else { break };
            match tokio::time::timeout(timeout, client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(Ok(r)) => {
                    tracing::warn!(
                        status = r.status().as_u16(),
                        "the OTLP collector refused spans"
                    )
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot reach the OTLP collector"),
                Err(_) => tracing::warn!("the OTLP collector did not answer in time"),
            }
        }
        if ok {
            counts.exported.fetch_add(n, Ordering::Relaxed);
        } else {
            counts.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let p = "00f067aa0ba902b7";
        assert_eq!(
            parse(&format!("00-{t}-{p}-01")),
            Some((t.to_string(), p.to_string()))
        );
        for bad in [
            format!("00-{t}-{p}"),
            format!("00-{t}-{p}-01-extra"),
            format!("ff-{t}-{p}-01"),
            format!("00-{}-{p}-01", "0".repeat(32)),
            format!("00-{t}-{}-01", "0".repeat(16)),
            format!("00-{}-{p}-01", t.to_uppercase()),
            "garbage".to_string(),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(parse(&format!("01-{t}-{p}-01-more")).is_some());
        let fresh = TraceCtx::from_header(None);
        assert_eq!((fresh.trace_id.len(), fresh.span_id.len()), (32, 16));
        assert!(fresh.parent.is_none());
    }

    #[test]
    fn prompts_are_the_prompt_fields_only_and_cut() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1}"#;
        assert_eq!(
            prompt_of(body).as_deref(),
            Some(r#"{"messages":[{"content":"hi","role":"user"}]}"#)
        );
        let big = format!(r#"{{"prompt":"{}"}}"#, "é".repeat(20_000));
        assert!(prompt_of(big.as_bytes()).unwrap().len() <= PROMPT_MAX);
        assert_eq!(prompt_of(b"{}"), None);
    }
}
