//! The proxy: authenticate → read and check the body → choose credentials the token may use
//! (policy) → call the provider, falling back in priority order → stream the answer back,
//! recording usage when it ends. Errors reach the client in its own dialect.
//!
//! Why one file: the request path as its steps, in order, so a reader sees the whole path in one
//! place.

use crate::credentials::Credentials;
use crate::policy::{self, Authorized};
use crate::record::{ObservedBody, Record};
use crate::tokens::Tokens;
use crate::usage::audit_unavailable;
use crate::usage::Recorder;
use crate::util::now_ms;
use crate::RequestId;
use airlock_providers::adapter::{Endpoint, ProviderKind};
use airlock_providers::dialect::{ApiError, Dialect};
use airlock_providers::usage::Observer;
use airlock_secrets::Secret;
use airlock_spend::charge::Estimate;
use airlock_store::UsageRow;
use airlock_token::{TokenError, Verified};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Time allowed for a client to send its request headers.
    pub header_timeout_secs: u64,
    /// Time allowed for a client to send its request body.
    pub body_timeout_secs: u64,
    /// Time to connect to a provider.
    pub upstream_connect_timeout_ms: u64,
    /// Time for a provider to start answering (response headers).
    pub upstream_timeout_secs: u64,
    /// Longest silence allowed inside a streamed response.
    pub stream_idle_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            header_timeout_secs: 30,
            body_timeout_secs: 60,
            upstream_connect_timeout_ms: 5_000,
            upstream_timeout_secs: 600,
            stream_idle_timeout_secs: 300,
        }
    }
}

/// What the data plane needs, and nothing else: the tokens in force, the credentials and their
/// keys, the spend engine's budgets and rate limits, the audit writer, the provider client, and
/// the limits it enforces.
pub struct Gateway {
    /// The verifier and the revocations.
    pub tokens: Arc<Tokens>,
    /// The credentials in force.
    pub creds: Arc<Credentials>,
    /// Spend caps.
    pub budgets: Arc<airlock_spend::budget::Budgets>,
    /// Requests and tokens per minute.
    pub rate_limits: Arc<airlock_spend::ratelimit::RateLimits>,
    /// The audit writer (and the metrics counters beside it).
    pub recorder: Recorder,
    /// HMAC key for the fingerprint of the key each request used.
    pub hmac: Arc<airlock_secrets::HmacKey>,
    /// The provider client.
    pub client: crate::util::HttpClient,
    /// Body size and time limits, upstream timeouts.
    pub limits: Limits,
    /// Output reserved for a request that sets no limit of its own.
    pub default_max_output_tokens: i64,
    /// Upstream model lists per credential, for `/v1/models`.
    pub model_lists:
        std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Vec<String>)>>,
}

/// Request headers passed on to the provider. Everything else, in particular the client's
/// `Authorization`, `x-api-key`, `api-key` and cookies, is dropped.
const FORWARD: &[&str] = &[
    "content-type",
    "accept",
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "idempotency-key",
];
const FORWARD_PREFIX: &[&str] = &["x-stainless-"];

/// Response headers passed back to the client.
const RETURN: &[&str] = &[
    "content-type",
    "cache-control",
    "x-request-id",
    "request-id",
    "openai-processing-ms",
    "openai-version",
    "retry-after",
    "retry-after-ms",
];
const RETURN_PREFIX: &[&str] = &["x-ratelimit-", "anthropic-ratelimit-"];

fn listed(name: &str, exact: &[&str], prefixes: &[&str]) -> bool {
    exact.contains(&name) || prefixes.iter().any(|p| name.starts_with(p))
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    max_output_tokens: Option<i64>,
    n: Option<i64>,
    best_of: Option<i64>,
}

struct Ctx {
    ep: Endpoint,
    /// The `x-ratelimit-*` state to send, when a rate limit applies.
    rate: Option<airlock_spend::ratelimit::Info>,
    record: Option<Record>,
}

impl Ctx {
    fn rec(&mut self) -> &mut Record {
        #[allow(clippy::expect_used)]
        self.record
            .as_mut()
            .expect("record present until the response is built")
    }
}

/// Entry point for every proxied endpoint.
pub async fn handle(app: Arc<Gateway>, ep: Endpoint, req: Request<Body>) -> Response {
    let dialect = ep.dialect();
    let (parts, body) = req.into_parts();
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let client_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let row = UsageRow {
        ts: now_ms(),
        request_id,
        endpoint: ep.path().to_string(),
        client_ip,
        // What the row says if the handler's future is dropped before it finishes: the
        // client went away. Every other path sets its own outcome.
        outcome: "client_disconnected".into(),
        status: 499,
        ..Default::default()
    };
    let mut record = Record::start(app.recorder.clone(), row);
    if app.recorder.tracer().is_some() {
        record.trace = Some(crate::otel::TraceCtx::from_header(
            parts.headers.get("traceparent"),
        ));
    }
    let mut ctx = Ctx {
        ep,
        rate: None,
        record: Some(record),
    };
    let result = run(&app, &mut ctx, parts, body).await;
    let rate = ctx.rate.take();
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if e.code == "insufficient_quota" {
                app.recorder
                    .counters
                    .budget_refusals
                    .fetch_add(1, Ordering::Relaxed);
            }
            // A refusal is answered after its audit record is durable (I5); the answer is a
            // refusal either way, so a failed write changes nothing for the client.
            if let Some(mut r) = ctx.record.take() {
                let outcome = if e.status.is_client_error() {
                    "refused"
                } else {
                    "failed"
                };
                r.finish(e.status.as_u16(), outcome);
                r.add_reason(&e.message);
                let _ = r.commit_refusal().await;
            }
            e.render(dialect)
        }
    };
    if let Some(info) = rate {
        airlock_spend::ratelimit::headers(&info, resp.headers_mut());
    }
    resp
}

/// Step 2, read the body within `limits.max_body_bytes` and `limits.body_timeout_secs`.
async fn read_body(limits: &Limits, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let max = limits.max_body_bytes;
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the {max}-byte limit"),
        )
    };
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > max {
            return Err(too_big());
        }
    }
    let limit = Duration::from_secs(limits.body_timeout_secs);
    match tokio::time::timeout(limit, Limited::new(body, max).collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {}s",
                limit.as_secs()
            ),
        )),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_big())
        }
        Ok(Err(_)) => Err(ApiError::bad_request("the request body could not be read")),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// The request path, one step after the other; each step is a function of its own below, in
/// this order, and knows nothing of the others.
async fn run(
    app: &Arc<Gateway>,
    ctx: &mut Ctx,
    parts: http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let token = authenticate(app, ctx, &parts.headers)?;
    // The body is read first so that the connection stays usable after a refusal.
    let bytes = read_body(&app.limits, &parts.headers, body).await?;
    if app.recorder.tracer().is_some_and(|t| t.capture_prompts) {
        ctx.rec().prompt = crate::otel::prompt_of(&bytes);
    }
    if !app.recorder.healthy() && !app.recorder.fail_open() {
        // The last audit write failed: refuse before a provider is called. This refusal's own
        // record is the next write attempt, so service resumes as soon as the log is writable.
        return Err(audit_unavailable());
    }
    let ask = parse(&bytes, ctx.ep, app.default_max_output_tokens)?;
    {
        let r = ctx.rec();
        r.row.model = Some(ask.model.clone());
        r.row.stream = ask.stream;
    }
    let mut allowed = route(
        &app.creds.load(),
        &app.tokens.verifier.load(),
        &token,
        ctx.ep,
        &ask.model,
        SystemTime::now(),
    )?;
    // What a request is charged when the provider may have billed it without saying how much.
    ctx.rec().charge().estimated(ask.estimate);
    let (input_est, output_est) = (ask.estimate.input, ask.estimate.output);
    // Budgets first (they may drop candidate credentials), then rate limits on what is left.
    if !app.budgets.is_empty() {
        reserve(
            app,
            ctx,
            &token,
            &ask.model,
            input_est,
            output_est,
            &mut allowed,
        )?;
    }
    if !app.rate_limits.is_empty() {
        admit(
            app,
            ctx,
            &token,
            input_est.saturating_add(output_est),
            &mut allowed,
        )?;
    }
    forward(app, ctx, &parts, bytes, allowed).await
}

/// Step 1, authenticate: a verified, unexpired, unrevoked token, whose identity goes on the
/// request's record (a revoked token's too, counted like an anonymous refusal).
fn authenticate(
    app: &Gateway,
    ctx: &mut Ctx,
    headers: &HeaderMap,
) -> Result<Arc<Verified>, ApiError> {
    match app.tokens.authenticate_identified(headers) {
        Ok(token) => {
            let r = ctx.rec();
            r.row.token_id = Some(token.id.clone());
            r.row.subject = Some(token.subject.clone());
            r.row.env = Some(token.env.clone());
            r.row.project.clone_from(&token.project);
            Ok(token)
        }
        Err((e, known)) => {
            if let Some(t) = known {
                let r = ctx.rec();
                r.cap_like_anonymous();
                r.row.token_id = Some(t.id.clone());
                r.row.subject = Some(t.subject.clone());
                r.row.env = Some(t.env.clone());
            }
            Err(e)
        }
    }
}

/// What the body asks for, as far as airlock reads it.
#[derive(Debug, PartialEq, Eq)]
struct Ask {
    model: String,
    stream: bool,
    /// What it may use (budgets, token rate limits, the charge's floor).
    estimate: Estimate,
}

/// Step 3, parse: only `model`, `stream` and the output limits are read from the body. The
/// estimate: input from the body's length (one token per 3 bytes), output from the largest
/// limit it sets (or the default), times the choices it asks for; endpoints that produce no
/// output reserve none.
fn parse(bytes: &[u8], ep: Endpoint, default_output: i64) -> Result<Ask, ApiError> {
    let probe: Probe<'_> = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "request body must be a JSON object ({}) at line {} column {}",
            match e.classify() {
                serde_json::error::Category::Data => "a field has the wrong type",
                _ => "malformed JSON",
            },
            e.line(),
            e.column()
        ))
    })?;
    let model = probe
        .model
        .as_deref()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("the request names no `model`"))?
        .to_string();
    if !valid_model(&model) {
        return Err(ApiError::bad_request(
            "`model` must be at most 256 characters of letters, digits and -._:/@+",
        ));
    }
    if airlock_secrets::looks_like_key(&model) {
        // Never copied into the log: a key pasted into the wrong field.
        return Err(ApiError::bad_request(
            "`model` looks like a key or token, not a model name; it was not recorded",
        ));
    }
    let choices = probe
        .n
        .unwrap_or(1)
        .max(probe.best_of.unwrap_or(1))
        .clamp(1, 128);
    let output = if matches!(ep, Endpoint::Embeddings | Endpoint::CountTokens) {
        0
    } else {
        [
            probe.max_tokens,
            probe.max_completion_tokens,
            probe.max_output_tokens,
        ]
        .into_iter()
        .flatten()
        .filter(|m| *m > 0)
        .max()
        .unwrap_or(default_output)
        .min(1 << 32)
        .saturating_mul(choices)
    };
    Ok(Ask {
        model,
        stream: probe.stream.unwrap_or(false),
        estimate: Estimate {
            input: (bytes.len() as i64 + 2) / 3,
            output,
            default_output: default_output.max(1),
            choices,
        },
    })
}

/// Steps 4 and 5, route and policy: the credentials that serve `model` in this dialect, by
/// priority, each checked against the token (environment first, I4, then its scope). Only
/// what passes is returned, as `Authorized` values.
fn route(
    set: &crate::credentials::CredentialSet,
    verifier: &airlock_token::Verifier,
    token: &Arc<Verified>,
    ep: Endpoint,
    model: &str,
    now: SystemTime,
) -> Result<Vec<Authorized>, ApiError> {
    let dialect = ep.dialect();
    let matching: Vec<_> = set
        .all
        .iter()
        .filter(|c| !c.suspended && c.provider.dialect() == dialect && c.serves(model))
        .collect();
    if matching.is_empty() {
        // Said only to a token that one of them would serve (its environment, its scope).
        if set.all.iter().any(|c| {
            c.suspended
                && c.provider.dialect() == dialect
                && c.serves(model)
                && policy::authorize(verifier, token, c, model, now).is_ok()
        }) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "credential_suspended",
                format!(
                    "the credentials that serve model `{model}` are suspended (an incident or an anomaly); an operator can lift it with `airlock credential resume NAME`"
                ),
            ));
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "no credential on this airlock serves model `{model}` through {}",
                ep.path()
            ),
        ));
    }
    let mut allowed: Vec<Authorized> = Vec::with_capacity(matching.len());
    let mut denial: Option<TokenError> = None;
    for c in matching {
        match policy::authorize(verifier, token, c, model, now) {
            Ok(a) => allowed.push(a),
            Err(e) => {
                // Keep the most useful reason: a scope refusal beats an environment mismatch.
                let better = match (&denial, &e) {
                    (None, _) => true,
                    (Some(TokenError::Denied(old)), TokenError::Denied(_)) => {
                        old.contains("environment")
                    }
                    _ => false,
                };
                if better {
                    denial = Some(e);
                }
            }
        }
    }
    if allowed.is_empty() {
        let e = denial.unwrap_or_else(|| TokenError::Denied("not allowed".into()));
        return Err(crate::tokens::token_error(&e));
    }
    Ok(allowed)
}

/// Admits the request under the token's, the identity's and the first candidate credential's
/// rate limits (a credential whose limit is reached gives way to the next candidate; the
/// fallbacks a request takes later are not counted again).
fn admit(
    app: &Gateway,
    ctx: &mut Ctx,
    token: &Verified,
    tokens: i64,
    allowed: &mut Vec<Authorized>,
) -> Result<(), ApiError> {
    use airlock_spend::budget::Kind;
    let counters = app.recorder.counters.clone();
    let limited = |r: airlock_spend::ratelimit::Refused, ctx: &mut Ctx| {
        counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        ctx.rate = Some(r.info);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            r.message,
        )
    };
    let (hold, info) = match app.rate_limits.admit(&token_subjects(token), tokens) {
        Ok(x) => x,
        Err(r) => return Err(limited(r, ctx)),
    };
    let mut holds: Vec<airlock_spend::ratelimit::Hold> = hold.into_iter().collect();
    let mut shown = info;
    let mut last = None;
    while let Some(first) = allowed.first() {
        match app
            .rate_limits
            .admit(&[(Kind::Credential, &first.credential().name)], tokens)
        {
            Ok((h, i)) => {
                if h.is_some() && shown.requests.is_none() && shown.tokens.is_none() {
                    shown = i;
                }
                holds.extend(h);
                break;
            }
            Err(r) => {
                last = Some(r);
                allowed.remove(0);
            }
        }
    }
    if allowed.is_empty() {
        if let Some(r) = last {
            return Err(limited(r, ctx));
        }
    }
    if shown.requests.is_some() || shown.tokens.is_some() {
        ctx.rate = Some(shown);
    }
    ctx.rec().charge().hold_rates(holds);
    Ok(())
}

/// What a token's budgets and rate limits may be set on: the token, its identity, its project.
fn token_subjects(token: &Verified) -> Vec<(airlock_spend::budget::Kind, &str)> {
    use airlock_spend::budget::Kind;
    let mut v = vec![
        (Kind::Token, token.id.as_str()),
        (Kind::Identity, token.subject.as_str()),
    ];
    if let Some(p) = &token.project {
        v.push((Kind::Project, p.as_str()));
    }
    v
}

fn quota(msg: String) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", msg)
}

/// Reserves the request's estimated maximum cost against the token's, the identity's and the
/// candidate credentials' budgets (a credential whose budget cannot take it is dropped from
/// the candidates); the reservations ride on the request's record, which settles them.
fn reserve(
    app: &Gateway,
    ctx: &mut Ctx,
    token: &Verified,
    model: &str,
    input_est: i64,
    output_est: i64,
    allowed: &mut Vec<Authorized>,
) -> Result<(), ApiError> {
    use airlock_spend::budget::Kind;
    let b = &app.budgets;
    let subjects = token_subjects(token);
    let budgeted = subjects.iter().any(|(k, n)| b.has(*k, n))
        || allowed
            .iter()
            .any(|a| b.has(Kind::Credential, &a.credential().name));
    if !budgeted {
        return Ok(());
    }
    let Some(rate) = app.recorder.prices().rate(model) else {
        return Err(quota(format!(
            "model `{model}` has no price, so its spend cannot be held to the budget that applies; an operator can add it under [pricing]"
        )));
    };
    let est = airlock_spend::budget::estimate(rate, input_est, output_est);
    let main = b.reserve(&subjects, est).map_err(|r| {
        quota(format!(
            "{}; ask for a larger budget or a new token",
            r.what
        ))
    })?;
    let mut held = vec![main];
    let mut last = None;
    allowed.retain(|a| {
        let name = &a.credential().name;
        if !b.has(Kind::Credential, name) {
            return true;
        }
        match b.reserve(&[(Kind::Credential, name)], est) {
            Ok(r) => {
                held.push(r);
                true
            }
            Err(r) => {
                last = Some(r.what);
                false
            }
        }
    });
    if allowed.is_empty() {
        return Err(quota(last.unwrap_or_else(|| "over budget".into())));
    }
    ctx.rec().charge().hold_budgets(held);
    Ok(())
}

/// Model names reach the decision cache, usage rows, logs and regular expressions: keep them
/// to the characters real model names use (`gpt-4o-mini`, `models/gemini-2.0-flash`,
/// `ft:gpt-4o-mini:org::id`, `llama3.1:8b`). `*` and `?` are refused so a name can never
/// look like a pattern.
fn valid_model(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 256
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:/@+".contains(&b))
}

fn upstream_request(
    a: &Authorized,
    ep: Endpoint,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
    key: &Secret,
) -> Result<Request<Full<Bytes>>, ApiError> {
    let c = a.credential();
    let url = c.provider.url(&c.base_url, ep);
    let mut b = Request::builder().method(method.clone()).uri(&url);
    if let Some(h) = b.headers_mut() {
        for (name, value) in headers {
            if listed(name.as_str(), FORWARD, FORWARD_PREFIX) {
                h.append(name.clone(), value.clone());
            }
        }
        if c.provider == ProviderKind::Anthropic && !h.contains_key("anthropic-version") {
            h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
        if !h.contains_key(http::header::CONTENT_TYPE) && method == Method::POST {
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        h.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let (name, value) = c.provider.auth_header(key).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "credential_unusable",
                format!(
                    "credential `{}` holds characters that cannot go in an HTTP header",
                    c.name
                ),
            )
        })?;
        h.insert(name, value);
    }
    b.body(Full::new(body)).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_upstream_url",
            format!("credential `{}` has an unusable base URL", c.name),
        )
    })
}

async fn forward(
    app: &Arc<Gateway>,
    ctx: &mut Ctx,
    parts: &http::request::Parts,
    body: Bytes,
    allowed: Vec<Authorized>,
) -> Result<Response, ApiError> {
    let n = allowed.len();
    let upstream_limit = Duration::from_secs(app.limits.upstream_timeout_secs);
    let mut last_err: Option<ApiError> = None;
    // Credentials tried before the one in the record, and why each was left: the audit record
    // names every credential whose key a request used.
    let mut tried: Vec<String> = Vec::new();
    let mut why = String::new();
    for (i, a) in allowed.iter().enumerate() {
        let last = i + 1 == n;
        let c = a.credential();
        if i > 0 {
            let prev = allowed[i - 1].credential();
            tried.push(format!("{} ({why})", prev.name));
        }
        {
            let r = ctx.rec();
            r.row.credential = Some(c.name.clone());
            r.row.provider = Some(c.provider.as_str().to_string());
            r.row.attempts = i as i64 + 1;
            if !tried.is_empty() {
                r.reason = Some(format!("fell back from {}", tried.join(", ")));
            }
        }
        if i > 0 {
            app.recorder
                .counters
                .fallbacks
                .fetch_add(1, Ordering::Relaxed);
        }
        let request_id = ctx.rec().row.request_id.clone();
        let secret = match c.secret(&app.creds, &request_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(credential = %c.name, error = %e, "secret unavailable");
                last_err = Some(secret_unavailable(c, &e));
                why = "key unavailable".into();
                continue;
            }
        };
        // Every key a request used, in order (a fallback used the earlier ones too).
        {
            let fp = secret.fingerprint(&app.hmac);
            let r = ctx.rec();
            r.key = Some(match r.key.take() {
                Some(k) => format!("{k},{fp}"),
                None => fp,
            });
        }
        let req = match upstream_request(
            a,
            ctx.ep,
            &parts.method,
            &parts.headers,
            body.clone(),
            &secret,
        ) {
            Ok(r) => r,
            Err(e) => {
                // A broken credential is this credential's problem: try the next one.
                tracing::warn!(credential = %c.name, code = e.code, "credential unusable");
                why = e.code.to_string();
                last_err = Some(e);
                continue;
            }
        };
        // From here the provider may bill it (until it answers an error or cannot be
        // reached); an earlier attempt that may have been billed stays so. Token counting is
        // free.
        let billable = ctx.ep.is_inference();
        ctx.rec().charge().sending(&c.name, billable);
        let resp = match tokio::time::timeout(upstream_limit, app.client.request(req)).await {
            Err(_) => {
                ctx.rec().charge().lost();
                tracing::warn!(credential = %c.name, "provider timed out");
                last_err = Some(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "the provider did not answer within {}s",
                        upstream_limit.as_secs()
                    ),
                ));
                why = "timeout".into();
                continue;
            }
            Ok(Err(e)) => {
                // Not connected: not sent. Failed after connecting: it may have been.
                if e.is_connect() {
                    ctx.rec().charge().not_sent();
                } else {
                    ctx.rec().charge().lost();
                }
                tracing::warn!(credential = %c.name, error = %e, "provider unreachable");
                last_err = Some(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    format!(
                        "the provider behind credential `{}` cannot be reached",
                        c.name
                    ),
                ));
                why = "unreachable".into();
                continue;
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        // Providers bill what they answer, not their errors.
        ctx.rec().charge().answered(status.as_u16() < 400);
        let credential_refused =
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
        let retryable = status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
            || credential_refused;
        if retryable && !last {
            tracing::info!(credential = %c.name, status = status.as_u16(), "falling back to the next credential");
            why = format!("HTTP {}", status.as_u16());
            continue;
        }
        if credential_refused {
            tracing::error!(credential = %c.name, status = status.as_u16(), "provider refused the credential's key");
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "credential_refused",
                format!(
                    "the provider refused the key of credential `{}` (HTTP {}); an operator must check it (`airlock credential show {}`)",
                    c.name,
                    status.as_u16(),
                    c.name
                ),
            ));
        }
        let mut record = ctx.record.take().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "request state lost",
            )
        })?;
        record.mark_ttfb();
        return Ok(respond(app, resp, record, &secret, ctx.ep.dialect()).await);
    }
    Err(last_err.unwrap_or_else(|| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "no_upstream",
            "no credential could serve the request",
        )
    }))
}

/// Largest non-streamed response body airlock holds while its audit record is written.
const MAX_RESPONSE_HOLD: usize = 64 * 1024 * 1024;

async fn respond(
    app: &Gateway,
    resp: http::Response<hyper::body::Incoming>,
    mut record: Record,
    key: &Secret,
    dialect: Dialect,
) -> Response {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let mut out = Response::builder().status(status);
    let sse = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if let Some(h) = out.headers_mut() {
        for (name, value) in &parts.headers {
            if listed(name.as_str(), RETURN, RETURN_PREFIX) {
                h.append(name.clone(), value.clone());
            }
        }
    }
    if sse && status.is_success() {
        // The use is on record before the first byte (I5); then events are streamed as they
        // arrive, and the end waits for the final record with the token counts.
        record.finish(status.as_u16(), "ok");
        if !record.commit_stream_start().await.may_answer() {
            record.finish(503, "failed");
            record.add_reason("the audit log could not be written");
            drop(record);
            return audit_unavailable().render(dialect);
        }
        let idle = Duration::from_secs(app.limits.stream_idle_timeout_secs);
        let observed = ObservedBody::new(body, Observer::new(true), record, idle, status.as_u16());
        return out
            .body(Body::new(observed))
            .unwrap_or_else(|_| Response::new(Body::empty()));
    }
    // Not streamed: the whole body is read, its record made durable, then it is answered (I5).
    let (limit, wait) = if status.is_success() {
        (
            MAX_RESPONSE_HOLD,
            Duration::from_secs(app.limits.upstream_timeout_secs),
        )
    } else {
        (1 << 20, Duration::from_secs(30))
    };
    let bytes = match tokio::time::timeout(wait, Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        _ if !status.is_success() => Bytes::new(),
        _ => {
            record.finish(502, "upstream_error");
            record.add_reason("the provider's response could not be read in full");
            let _ = record.commit().await;
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_body_failed",
                "the provider's response could not be read in full (broken off, too slow, or over 64 MiB)",
            )
            .render(dialect);
        }
    };
    let bytes = if status.is_success() {
        record.observe_body(&bytes);
        record.finish(status.as_u16(), "ok");
        bytes
    } else {
        // Error bodies: make sure no key is echoed back (I1).
        record.finish(status.as_u16(), "upstream_refused");
        key.scrub(&bytes).map(Bytes::from).unwrap_or(bytes)
    };
    if !record.commit().await.may_answer() {
        return audit_unavailable().render(dialect);
    }
    if let Some(h) = out.headers_mut() {
        h.remove(http::header::CONTENT_LENGTH);
    }
    out.body(Body::from(bytes))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// The 503 for a credential whose key cannot be read: which store, and whether it is down or
/// refused (details are in the audit record and the server log, not in the client's answer).
pub(crate) fn secret_unavailable(
    c: &crate::credentials::Credential,
    e: &airlock_secrets::ResolveError,
) -> ApiError {
    let store = c.reference().store();
    let what = if e.is_definite() {
        format!("its secret store ({store}) refused it or no longer holds it")
    } else {
        format!("its secret store ({store}) is not answering and no cached copy within max_stale is held")
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "credential_unavailable",
        format!(
            "the key of credential `{}` cannot be read: {what}; an operator must check it",
            c.name
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::presented_token;

    #[test]
    fn token_extraction_and_scrubbing() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("bearer abc"));
        assert_eq!(presented_token(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static(" xyz "));
        assert_eq!(presented_token(&h), Some("xyz"));
        assert_eq!(presented_token(&HeaderMap::new()), None);
        let k = Secret::new("sk-12345678".into());
        assert_eq!(
            k.scrub(b"key sk-12345678 again sk-12345678.").unwrap(),
            b"key [redacted] again [redacted]."
        );
        assert!(k.scrub(b"nothing here").is_none());
        assert!(Secret::new("short".into()).scrub(b"short").is_none());
        assert!(!listed("authorization", FORWARD, FORWARD_PREFIX));
        assert!(!listed("x-api-key", FORWARD, FORWARD_PREFIX));
        assert!(!listed("cookie", FORWARD, FORWARD_PREFIX));
        assert!(listed("x-stainless-lang", FORWARD, FORWARD_PREFIX));
        assert!(!listed("set-cookie", RETURN, RETURN_PREFIX));
    }

    // Step 3: parse.

    #[test]
    fn parse_reads_model_stream_and_estimate() {
        let body = br#"{"model":"gpt-4o-mini","stream":true,"max_tokens":10,"max_completion_tokens":300,"n":2,"messages":[]}"#;
        let ask = parse(body, Endpoint::ChatCompletions, 4096)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(ask.model, "gpt-4o-mini");
        assert!(ask.stream);
        assert_eq!(
            ask.estimate,
            Estimate {
                input: (body.len() as i64 + 2) / 3,
                output: 600,
                default_output: 4096,
                choices: 2
            },
            "the largest limit it sets, times its choices"
        );
        let ask = parse(
            br#"{"model":"m","best_of":500}"#,
            Endpoint::Completions,
            100,
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!((ask.estimate.output, ask.estimate.choices), (12_800, 128));
        let ask = parse(
            br#"{"model":"m","max_tokens":1e3}"#,
            Endpoint::Embeddings,
            100,
        );
        assert!(ask.is_err(), "a float where an integer belongs is a 400");
        let ask = parse(
            br#"{"model":"text-embedding-3-small","input":"x"}"#,
            Endpoint::Embeddings,
            100,
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(ask.estimate.output, 0, "embeddings produce no output");
        let huge = format!(r#"{{"model":"m","max_tokens":{}}}"#, i64::MAX);
        let ask = parse(huge.as_bytes(), Endpoint::Messages, 100)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(ask.estimate.output, 1 << 32, "capped");
    }

    #[test]
    fn parse_refuses_what_it_cannot_route_with_a_400() {
        let key = format!("sk-proj-{}", airlock_secrets::random_token(24));
        let key_model = format!(r#"{{"model":"{key}"}}"#);
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(257));
        for (body, says) in [
            (&b"not json"[..], "malformed JSON"),
            (br#"{"model":5}"#, "wrong type"),
            (br#"{"messages":[]}"#, "names no `model`"),
            (br#"{"model":""}"#, "names no `model`"),
            (br#"{"model":"a b"}"#, "at most 256 characters"),
            (long.as_bytes(), "at most 256 characters"),
            (key_model.as_bytes(), "looks like a key"),
        ] {
            let e = parse(body, Endpoint::ChatCompletions, 100)
                .err()
                .unwrap_or_else(|| panic!("refused: {}", String::from_utf8_lossy(body)));
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(says), "{}: {}", says, e.message);
            assert!(!e.message.contains(&key), "a key is never echoed");
        }
    }

    // Step 2: read the body.

    fn limits(max: usize, secs: u64) -> Limits {
        Limits {
            max_body_bytes: max,
            body_timeout_secs: secs,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_body_enforces_size_and_time() {
        let ok = read_body(&limits(10, 5), &HeaderMap::new(), Body::from("0123456789")).await;
        assert_eq!(ok.ok().as_deref(), Some(&b"0123456789"[..]));
        let big = read_body(&limits(10, 5), &HeaderMap::new(), Body::from("0123456789a")).await;
        assert_eq!(
            big.err().map(|e| e.status),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        // A declared length over the limit is refused before anything is read.
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        let declared = read_body(&limits(10, 5), &h, Body::empty()).await;
        assert_eq!(
            declared.err().map(|e| e.status),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        // A body that never ends is cut at the timeout.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let slow = Body::from_stream(tokio_stream_of(rx));
        let t = read_body(&limits(10, 1), &HeaderMap::new(), slow).await;
        assert_eq!(t.err().map(|e| e.status), Some(StatusCode::REQUEST_TIMEOUT));
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    // Steps 1, 4 and 5 on a gateway built as serve builds it.

    fn mint(kit: &crate::testkit::Kit, env: &str, models: &[&str]) -> HeaderMap {
        kit.token(env, models)
    }

    fn routed(
        kit: &crate::testkit::Kit,
        h: &HeaderMap,
        model: &str,
    ) -> Result<Vec<String>, ApiError> {
        let token = kit.app.tokens.authenticate(h)?;
        route(
            &kit.app.creds.load(),
            &kit.app.tokens.verifier.load(),
            &token,
            Endpoint::ChatCompletions,
            model,
            SystemTime::now(),
        )
        .map(|a| a.iter().map(|a| a.credential().name.clone()).collect())
    }

    #[tokio::test]
    async fn route_keeps_environments_apart_and_names_the_refusal() {
        let kit = crate::testkit::Kit::new("").await;
        for (name, env) in [("prod-a", "prod"), ("prod-b", "prod"), ("dev-a", "dev")] {
            let f = kit.key_file(name, &crate::testkit::key(name));
            kit.credential(
                name,
                env,
                &format!("file:{}", f.display()),
                "http://127.0.0.1:9/v1",
            )
            .await;
        }
        let prod = mint(&kit, "prod", &["gpt-*"]);
        let served = routed(&kit, &prod, "gpt-4o").unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(served, ["prod-a", "prod-b"], "I4: never dev-a");
        let narrow = mint(&kit, "dev", &["gpt-4o-mini"]);
        let e = routed(&kit, &narrow, "gpt-4o").err();
        assert_eq!(
            e.map(|e| e.status),
            Some(StatusCode::FORBIDDEN),
            "out of scope"
        );
        let e = routed(&kit, &prod, "claude-x").err();
        assert_eq!(e.map(|e| e.code), Some("model_not_found"));
        // Suspended: said only to a token one of them would serve.
        for name in ["prod-a", "prod-b", "dev-a"] {
            let done = kit.app.store.set_suspended(name, true).await;
            assert!(done.unwrap_or(false));
        }
        kit.app
            .creds
            .reload()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let e = routed(&kit, &prod, "gpt-4o").err();
        assert_eq!(e.map(|e| e.code), Some("credential_suspended"));
        // A token none of them would serve is not told about them.
        let eval = mint(&kit, "eval", &["gpt-*"]);
        let e = routed(&kit, &eval, "gpt-4o").err();
        assert_eq!(e.map(|e| e.code), Some("model_not_found"));
    }

    #[tokio::test]
    async fn authenticate_records_who_even_when_revoked() {
        let kit = crate::testkit::Kit::new("").await;
        let h = mint(&kit, "prod", &["gpt-*"]);
        let row = UsageRow::default();
        let mut ctx = Ctx {
            ep: Endpoint::ChatCompletions,
            rate: None,
            record: Some(Record::start(kit.app.recorder.clone(), row)),
        };
        let gw = kit.app.gateway.clone();
        let t = authenticate(&gw, &mut ctx, &h).unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(ctx.rec().row.subject.as_deref(), Some("alice"));
        let row = airlock_store::TokenRow {
            id: t.id.clone(),
            subject: t.subject.clone(),
            env: t.env.clone(),
            models: vec!["gpt-*".into()],
            credentials: Vec::new(),
            key_id: 1,
            created_at: now_ms(),
            expires_at: now_ms() + 600_000,
            revoked_at: None,
            minted_by: "test".into(),
            claims: None,
        };
        kit.app
            .store
            .insert_token(&row)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        {
            let serial = kit.app.tokens.serial().await;
            assert!(kit
                .app
                .store
                .revoke_token(&t.id, now_ms())
                .await
                .unwrap_or(false));
            kit.app.tokens.mark_revoked(&serial, &t.id);
        }
        let mut ctx = Ctx {
            ep: Endpoint::ChatCompletions,
            rate: None,
            record: Some(Record::start(kit.app.recorder.clone(), UsageRow::default())),
        };
        let e = authenticate(&gw, &mut ctx, &h).err();
        assert_eq!(e.map(|e| e.code), Some("token_revoked"));
        assert_eq!(
            ctx.rec().row.token_id.as_deref(),
            Some(t.id.as_str()),
            "who it was"
        );
        let mut ctx = Ctx {
            ep: Endpoint::ChatCompletions,
            rate: None,
            record: Some(Record::start(kit.app.recorder.clone(), UsageRow::default())),
        };
        let e = authenticate(&gw, &mut ctx, &HeaderMap::new()).err();
        assert_eq!(e.map(|e| e.code), Some("missing_token"));
        assert_eq!(ctx.rec().row.token_id, None);
    }
}
