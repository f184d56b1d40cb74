//! The HTTP server. The request path, outermost first (each a small layer or step, see
//! ARCHITECTURE.md):
//!
//! 1. `edge`: request id, panic → 500 in the client's dialect, one trace line per request
//!    (method, path, status, time: never headers or bodies)
//! 2. router: proxied endpoints, `/v1/models`, health, metrics, `/admin/v1` (role-guarded),
//!    fallback → 404 in the dialect
//! 3. proxy: authenticate → read body (size and time limits) → policy (token × credential, I4)
//!    → provider adapter with fallback → stream back, usage recorded when it ends
//!
//! Connections are served by hyper directly (not `axum::serve`) so header-read timeouts and
//! graceful shutdown are set here.

use crate::state::App;
use crate::RequestId;
use airlock_providers::adapter::Endpoint;
use airlock_providers::dialect::{ApiError, Dialect};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::FutureExt;
use http::{HeaderValue, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

fn proxied(ep: Endpoint) -> axum::routing::MethodRouter<Arc<App>> {
    post(move |State(app): State<Arc<App>>, req: Request<Body>| {
        crate::proxy::handle(app.gateway.clone(), ep, req)
    })
}

/// Builds the whole router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", proxied(Endpoint::ChatCompletions))
        .route("/v1/completions", proxied(Endpoint::Completions))
        .route("/v1/embeddings", proxied(Endpoint::Embeddings))
        .route("/v1/responses", proxied(Endpoint::Responses))
        .route("/v1/messages", proxied(Endpoint::Messages))
        .route("/v1/messages/count_tokens", proxied(Endpoint::CountTokens))
        .route(
            "/v1/models",
            get(|State(app): State<Arc<App>>, req: Request<Body>| {
                crate::models::models(app.gateway.clone(), req)
            }),
        )
        .route(
            "/v1/models/{id}",
            get(
                |State(app): State<Arc<App>>, Path(id): Path<String>, req: Request<Body>| {
                    crate::models::model_one(app.gateway.clone(), id, req)
                },
            ),
        )
        .route(
            "/v1/token",
            post(|State(app): State<Arc<App>>, req: Request<Body>| {
                crate::identity::mint_for_service_account(app.issuer.clone(), req)
            }),
        )
        .route(
            "/v1/token/exchange",
            post(|State(app): State<Arc<App>>, req: Request<Body>| {
                crate::oidc::exchange(app.trust.clone(), req)
            }),
        )
        .route(
            "/v1/token/revoke",
            post(|State(app): State<Arc<App>>, req: Request<Body>| {
                crate::identity::revoke_self(app.issuer.clone(), req)
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest(
            "/admin/v1",
            crate::admin::router(&app.control).with_state(app.control.clone()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(edge))
        .with_state(app)
}

async fn not_found(req: Request<Body>) -> Response {
    let path = req.uri().path().to_string();
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!("airlock has no route {} {path}", req.method()),
    )
    .render(Dialect::for_path(&path))
}

async fn method_not_allowed(req: Request<Body>) -> Response {
    let path = req.uri().path().to_string();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {path}", req.method()),
    )
    .render(Dialect::for_path(&path))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.store.ping().await {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let c = &app.recorder.counters;
    let log = app.recorder.log_stats();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut body = format!(
        "# TYPE airlock_requests_total counter\nairlock_requests_total {}\n\
         # TYPE airlock_refused_total counter\nairlock_refused_total {}\n\
         # TYPE airlock_unauthenticated_total counter\nairlock_unauthenticated_total {}\n\
         # TYPE airlock_fallbacks_total counter\nairlock_fallbacks_total {}\n\
         # TYPE airlock_input_tokens_total counter\nairlock_input_tokens_total {}\n\
         # TYPE airlock_output_tokens_total counter\nairlock_output_tokens_total {}\n\
         # TYPE airlock_record_write_errors_total counter\nairlock_record_write_errors_total {}\n\
         # TYPE airlock_audit_records_total counter\nairlock_audit_records_total {}\n\
         # TYPE airlock_audit_checkpoints_total counter\nairlock_audit_checkpoints_total {}\n\
         # TYPE airlock_audit_unrecorded_total counter\nairlock_audit_unrecorded_total {}\n\
         # TYPE airlock_audit_anonymous_skipped_total counter\nairlock_audit_anonymous_skipped_total {}\n\
         # TYPE airlock_rotations_rejected_total counter\nairlock_rotations_rejected_total {}\n\
         # TYPE airlock_cost_nanodollars_total counter\nairlock_cost_nanodollars_total {}\n\
         # TYPE airlock_budget_refusals_total counter\nairlock_budget_refusals_total {}\n\
         # TYPE airlock_rate_limited_total counter\nairlock_rate_limited_total {}\n\
         # TYPE airlock_token_exchanges_total counter\nairlock_token_exchanges_total{{outcome=\"granted\"}} {}\nairlock_token_exchanges_total{{outcome=\"refused\"}} {}\n\
         # TYPE airlock_budgets gauge\nairlock_budgets {}\n\
         # TYPE airlock_audit_healthy gauge\nairlock_audit_healthy {}\n\
         # TYPE airlock_credentials gauge\nairlock_credentials {}\n\
         # TYPE airlock_uptime_seconds gauge\nairlock_uptime_seconds {}\n",
        g(&c.requests),
        g(&c.refused),
        g(&c.unauthenticated),
        g(&c.fallbacks),
        g(&c.input_tokens),
        g(&c.output_tokens),
        g(&log.write_errors),
        g(&log.records),
        g(&log.checkpoints),
        g(&c.audit_unrecorded),
        g(&c.audit_anonymous_skipped),
        g(&c.rotations_rejected),
        g(&c.cost_nanos),
        g(&c.budget_refusals),
        g(&c.rate_limited),
        g(&c.exchanges_granted),
        g(&c.exchanges_refused),
        app.budgets.status().len(),
        u8::from(app.recorder.healthy()),
        app.creds.load().all.len(),
        app.started.elapsed().as_secs()
    );
    {
        use std::fmt::Write as _;
        body.push_str("# TYPE airlock_request_duration_seconds histogram\n");
        for (i, ep) in crate::usage::ENDPOINTS.iter().enumerate() {
            c.request_seconds[i].render(
                &mut body,
                "airlock_request_duration_seconds",
                &format!("endpoint=\"{ep}\""),
            );
        }
        body.push_str("# TYPE airlock_upstream_ttfb_seconds histogram\n");
        c.upstream_ttfb_seconds
            .render(&mut body, "airlock_upstream_ttfb_seconds", "");
        body.push_str("# TYPE airlock_audit_lag_seconds histogram\n");
        c.audit_lag_seconds
            .render(&mut body, "airlock_audit_lag_seconds", "");
        let _ = write!(
            body,
            "# TYPE airlock_audit_queue_depth gauge\nairlock_audit_queue_depth {}\n\
             # TYPE airlock_secret_read_failures_total counter\nairlock_secret_read_failures_total {}\n",
            app.recorder.queue_depth(),
            g(&c.secret_read_failures),
        );
    }
    {
        // Budget use, by budget id (ids only: names of identities and projects stay in the
        // admin API). The busiest first, at most 1000 series.
        use std::fmt::Write as _;
        let mut st = app.budgets.status();
        st.sort_by_key(|s| {
            std::cmp::Reverse(
                (s.spent_nanos.saturating_add(s.reserved_nanos) as i128 * 1_000_000)
                    / i128::from(s.limit_nanos.max(1)),
            )
        });
        st.truncate(1000);
        type Pick = fn(&airlock_spend::budget::Status) -> i64;
        let families: [(&str, Pick); 3] = [
            ("spent", |s| s.spent_nanos),
            ("reserved", |s| s.reserved_nanos),
            ("limit", |s| s.limit_nanos),
        ];
        for (what, value) in families {
            let _ = writeln!(body, "# TYPE airlock_budget_{what}_nanodollars gauge");
            for s in &st {
                let _ = writeln!(
                    body,
                    "airlock_budget_{what}_nanodollars{{budget=\"{}\"}} {}",
                    s.id,
                    value(s)
                );
            }
        }
    }
    if let Some(t) = app.recorder.tracer() {
        use std::fmt::Write as _;
        let _ = write!(
            body,
            "# TYPE airlock_otel_spans_total counter\n\
             airlock_otel_spans_total{{outcome=\"exported\"}} {}\n\
             airlock_otel_spans_total{{outcome=\"dropped\"}} {}\n",
            g(&t.counts.exported),
            g(&t.counts.dropped),
        );
    }
    if let Some(d) = app.control.anomaly.get() {
        use std::fmt::Write as _;
        body.push_str("# TYPE airlock_anomalies_total counter\n");
        for k in airlock_spend::anomaly::Kind::ALL {
            for (i, s) in ["credential", "identity"].iter().enumerate() {
                let _ = writeln!(
                    body,
                    "airlock_anomalies_total{{kind=\"{}\",subject=\"{s}\"}} {}",
                    k.name(),
                    g(&d.raised[k as usize][i])
                );
            }
        }
        let _ = write!(
            body,
            "# TYPE airlock_anomaly_webhook_deliveries_total counter\n\
             airlock_anomaly_webhook_deliveries_total{{outcome=\"delivered\"}} {}\n\
             airlock_anomaly_webhook_deliveries_total{{outcome=\"failed\"}} {}\n\
             # TYPE airlock_anomalies_dropped_total counter\nairlock_anomalies_dropped_total {}\n\
             # TYPE airlock_anomaly_untracked_total counter\nairlock_anomaly_untracked_total {}\n\
             # TYPE airlock_anomalies_suppressed_total counter\nairlock_anomalies_suppressed_total {}\n",
            g(&d.deliveries.delivered),
            g(&d.deliveries.failed),
            g(&d.dropped),
            g(&d.untracked),
            g(&d.suppressed),
        );
        if d.test_clock {
            let _ = write!(
                body,
                "# TYPE airlock_anomaly_test_clock_offset_seconds gauge\nairlock_anomaly_test_clock_offset_seconds {}\n",
                d.offset() / 1000
            );
        }
    }
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

async fn edge(mut req: Request<Body>, next: axum::middleware::Next) -> Response {
    let id = airlock_secrets::random_token(8);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = airlock_secrets::redact_path(req.uri().path());
    let started = Instant::now();
    let mut resp = match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(request_id = %id, path = %path, "handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("internal error (request {id}); the server keeps running"),
            )
            .render(Dialect::for_path(&path))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-airlock-request-id", v);
    }
    tracing::debug!(request_id = %id, %method, %path, status = resp.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    resp
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes in-flight requests
/// (up to 30 s).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = router.clone().layer(axum::Extension(ConnectInfo(peer)));
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("in-flight requests did not finish within 30s"),
    }
}

/// Binds an address.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panic_becomes_a_500_in_the_dialect_and_the_router_survives() {
        #[allow(clippy::panic)]
        let r: Router = Router::new()
            .route(
                "/v1/messages",
                post(|| async {
                    if true {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            )
            .route(
                "/v1/chat/completions",
                post(|| async {
                    if true {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            )
            .route("/ok", get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(edge));
        for (path, anthropic) in [("/v1/messages", true), ("/v1/chat/completions", false)] {
            let resp = r
                .clone()
                .oneshot(Request::post(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(resp.headers().contains_key("x-airlock-request-id"));
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v.get("type").is_some(), anthropic, "{v}");
            assert!(
                !String::from_utf8_lossy(&body).contains("boom"),
                "panic text is not sent to clients"
            );
        }
        let ok = r
            .oneshot(Request::get("/ok").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
