//! Small helpers every part of the gateway uses and that depend on nothing else in it: the
//! clock, the one outbound HTTP client type, names, redaction of caller input in messages, and
//! reading the token a client presented.

use http::HeaderMap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whether `s` may name a credential, an environment, a key or an account: 1 to 64 of
/// `[A-Za-z0-9._-]`, and not shaped like a provider key.
pub fn valid_name(s: &str) -> bool {
    // A key pasted where a name belongs would be stored and audited: refused.
    !airlock_secrets::looks_like_key(s)
        && !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A deserializer's message with the values it quotes left out: they are the caller's input,
/// which may be a secret (`{"candidates": "sk-…"}`), and the message is also audited. Short
/// backticked names (field names) stay, so the message still says what was wrong.
pub fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['"', '`']) {
        let q = rest.as_bytes()[i] as char;
        out.push_str(&rest[..=i]);
        let after = &rest[i + 1..];
        match after.find(q) {
            Some(j) => {
                let inner = &after[..j];
                if q == '`' && inner.len() <= 32 && !airlock_secrets::looks_like_key(inner) {
                    out.push_str(inner);
                } else {
                    out.push('…');
                }
                out.push(q);
                rest = &after[j + 1..];
            }
            None => {
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.chars().take(300).collect()
}

/// The token presented by the client, as each SDK sends it.
pub fn presented_token(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    h.get("x-api-key")
        .or_else(|| h.get("api-key"))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The HTTP client used for providers and secret stores (rustls with the platform's roots;
/// HTTP/1.1 and h2).
pub type HttpClient = airlock_secretstore::HttpClient;

/// Builds the provider client.
pub fn http_client(connect_timeout: Duration) -> anyhow::Result<HttpClient> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
