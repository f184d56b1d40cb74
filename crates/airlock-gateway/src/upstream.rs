//! Calls to a provider outside the request path: the cheapest authenticated call (list models)
//! that tests a key (`credential verify`, rotation's test, `doctor`).

use crate::credentials::{Credential, Credentials};
use crate::util::HttpClient;
use airlock_providers::adapter::{Endpoint, ProviderKind};
use airlock_secrets::Secret;
use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use std::time::Duration;

/// What the provider said to a key.
pub struct Probe {
    /// `ok`, `refused` or `unreachable`.
    pub status: &'static str,
    /// In words.
    pub detail: String,
    /// The provider's status code, when it answered.
    pub http_status: Option<u16>,
}

/// The provider's cheapest authenticated call (list models) with `secret`.
pub async fn probe(client: &HttpClient, c: &Credential, secret: &Secret) -> Probe {
    let Some(req) = models_request(c, secret) else {
        return Probe {
            status: "unreachable",
            detail: "the credential's base URL is unusable".into(),
            http_status: None,
        };
    };
    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(resp)) => {
            let code = resp.status().as_u16();
            let (status, detail) = match code {
                200..=299 => ("ok", format!("the provider accepted the key (HTTP {code})")),
                401 | 403 => (
                    "refused",
                    format!("the provider refused the key (HTTP {code})"),
                ),
                _ => (
                    "unreachable",
                    format!("the provider answered HTTP {code}, which says nothing about the key"),
                ),
            };
            Probe {
                status,
                detail,
                http_status: Some(code),
            }
        }
        Ok(Err(_)) => Probe {
            status: "unreachable",
            detail: "the provider cannot be reached".into(),
            http_status: None,
        },
        Err(_) => Probe {
            status: "unreachable",
            detail: "the provider did not answer within 10s".into(),
            http_status: None,
        },
    }
}

/// The provider's cheapest authenticated call: list models.
pub fn models_request(c: &Credential, secret: &Secret) -> Option<Request<Full<Bytes>>> {
    let url = c.provider.url(&c.base_url, Endpoint::Models);
    let mut b = Request::builder().method(Method::GET).uri(url);
    if let (Some(h), Some((n, v))) = (b.headers_mut(), c.provider.auth_header(secret)) {
        h.insert(n, v);
        if c.provider == ProviderKind::Anthropic {
            h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
    }
    b.body(Full::new(Bytes::new())).ok()
}

/// `credential verify`: the key read from its store now, then the provider asked to list
/// models with it. `status` is `ok`, `refused` (the provider said 401/403), `unreachable`
/// (no answer, or an answer that says nothing about the key) or `unreadable` (the store).
pub async fn verify(
    creds: &Credentials,
    client: &HttpClient,
    c: &Credential,
) -> airlock_api::credentials::Verification {
    let f = c.read_now(creds, "verify read").await;
    let mut out = airlock_api::credentials::Verification {
        credential: c.name.clone(),
        provider: c.provider.as_str().into(),
        env: c.env.clone(),
        store: c.reference().store().into(),
        reference: c.reference().to_string(),
        ..Default::default()
    };
    // The key in service is what is checked; a newer one in the store is a candidate that
    // the refresher tests and promotes by itself.
    let secret = match (&f.result, c.cell().current()) {
        (Err(e), _) => {
            out.status = "unreadable".into();
            out.detail = e.to_string();
            return out;
        }
        (Ok(_), Some((s, v))) => {
            out.version = v;
            s
        }
        (Ok(s), None) => s.clone(),
    };
    if f.candidate {
        out.store_has_newer = Some(f.version.clone().unwrap_or_default());
    }
    out.fingerprint = Some(secret.fingerprint(&creds.hmac));
    out.last4 = Some(secret.last4());
    let p = probe(client, c, &secret).await;
    out.status = p.status.into();
    out.detail = p.detail;
    out.http_status = p.http_status;
    out
}
