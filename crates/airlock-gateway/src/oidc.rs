//! Workload identity: `POST /v1/token/exchange` (RFC 8693). A CI job or a pod presents the
//! identity token its platform gave it (a JWT from an OIDC issuer); when a trust policy admits
//! it, it gets a short-lived airlock token scoped by that policy.
//!
//! Why one file: token exchange is one security check (trust policy, signing keys, JWT
//! verification, the grant), reviewed as a whole.
//!
//! The JWT is checked against the issuer's JWKS (discovered from
//! `ISSUER/.well-known/openid-configuration` or configured, cached, fetched again on an unknown
//! `kid` at most every `jwks_min_refetch_secs`), the policy's signature algorithm allow-list
//! (asymmetric algorithms only: an HMAC "signature" keyed with a public key is the classic
//! confusion attack, and `alg: none` never parses), `iss`, `aud`, `exp`/`nbf`/`iat` with a small
//! leeway, then the policy's claim conditions. Policies come from `[[trust]]` tables in the
//! configuration and from the admin API; the first that admits the token (configuration first,
//! then API policies oldest first) decides, unless the request names one with `audience`.
//! Every exchange is an audit record (`token.exchange`), granted or refused with the reason.

use crate::identity::{self, Ask, Event, IssueError, Origin, Scope};
use airlock_token::glob::Glob;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `[oidc]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// Clock skew allowed on `exp`, `nbf` and `iat`, seconds.
    pub leeway_secs: u64,
    /// How long an issuer's keys are used before they are fetched again.
    pub jwks_cache_secs: u64,
    /// The shortest gap between two fetches of one issuer's keys (a token naming an unknown
    /// `kid` triggers a fetch, so this bounds what forged tokens can make airlock do).
    pub jwks_min_refetch_secs: u64,
    /// Timeout of each discovery or JWKS request.
    pub fetch_timeout_secs: f64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            leeway_secs: 60,
            jwks_cache_secs: 3600,
            jwks_min_refetch_secs: 10,
            fetch_timeout_secs: 5.0,
        }
    }
}

/// Token exchange: the trust policies in force (the configuration's, then the API's), the
/// issuers' signing keys, and the issuer that mints what a policy grants.
pub struct Trust {
    /// Mints the granted tokens and audits each exchange.
    pub issuer: Arc<identity::Issuer>,
    /// `[oidc]`.
    pub settings: OidcConfig,
    /// The configuration's `[[trust]]` policies.
    pub configured: Vec<TrustPolicy>,
    /// The client for discovery and JWKS requests.
    pub client: crate::util::HttpClient,
    /// The compiled policies in force.
    pub policies: arc_swap::ArcSwap<Vec<Arc<Compiled>>>,
    /// Issuers' signing keys.
    pub jwks: JwksCache,
    /// One reload at a time, so an older read never replaces a newer list.
    reload_lock: tokio::sync::Mutex<()>,
}

impl Trust {
    /// No policies until the first `reload`.
    pub fn new(
        issuer: Arc<identity::Issuer>,
        settings: OidcConfig,
        configured: Vec<TrustPolicy>,
        client: crate::util::HttpClient,
    ) -> Self {
        Trust {
            issuer,
            settings,
            configured,
            client,
            policies: arc_swap::ArcSwap::from_pointee(Vec::new()),
            jwks: JwksCache::default(),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Rebuilds the policy list (at start and after a change through the API).
    pub async fn reload(&self) -> Result<(), String> {
        let _one = self.reload_lock.lock().await;
        let list = load_policies(self).await?;
        // Keys are cached per source (a policy's jwks_url or its issuer's discovery), so a
        // changed policy never inherits another's keys and the cache can stay.
        self.policies.store(Arc::new(list));
        Ok(())
    }
}

/// RFC 8693 grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
const MAX_JWT: usize = 16 * 1024;

pub use airlock_api::trust::{Condition, PolicyGrant, Rule, TrustPolicy};

enum Matcher {
    Exact(String),
    Glob(Glob),
    OneOf(Vec<String>),
}

/// A checked policy, ready to match.
pub struct Compiled {
    /// The policy as written.
    pub policy: TrustPolicy,
    /// `config` or `api`.
    pub source: &'static str,
    algorithms: Vec<Algorithm>,
    matchers: Vec<(String, Matcher)>,
    scope: Scope,
}

/// Whether a URL is acceptable for an issuer or JWKS: https, or http to this machine.
pub(crate) fn check_url(what: &str, url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{what} `{url}` is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => {}
        Some("http") if loopback => {}
        _ => {
            return Err(format!(
                "{what} `{url}` must be https (plain http only to this machine)"
            ))
        }
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!("{what} `{url}` must not have a query or fragment"));
    }
    Ok(())
}

/// Checking a policy as written into one ready to match.
pub trait Compile {
    /// Checks the policy and prepares its matchers.
    fn compile(self, source: &'static str, app_max_ttl: Duration) -> Result<Compiled, String>;
}

impl Compile for TrustPolicy {
    fn compile(self, source: &'static str, app_max_ttl: Duration) -> Result<Compiled, String> {
        let name = self.name.clone();
        let e = |m: String| format!("trust policy `{name}`: {m}");
        if !crate::util::valid_name(&self.name) {
            return Err(format!(
                "trust policy name `{}`: use 1-64 letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        check_url("issuer", &self.issuer).map_err(e)?;
        if let Some(j) = &self.jwks_url {
            check_url("jwks_url", j).map_err(e)?;
        }
        if self.audience.is_empty() || self.audience.len() > 256 {
            return Err(e("audience must be 1-256 characters".into()));
        }
        let mut algorithms = Vec::new();
        for a in &self.algorithms {
            let alg = Algorithm::from_str(a).map_err(|_| {
                e(format!(
                    "algorithm `{a}` is not one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"
                ))
            })?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(e(format!(
                    "{a} is a shared-secret algorithm; identity tokens are verified with the issuer's public keys only"
                )));
            }
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(e("algorithms must list at least one".into()));
        }
        let mut matchers = Vec::new();
        for (claim, c) in &self.claims {
            if claim.is_empty() || claim.len() > 64 {
                return Err(e("claim names are 1-64 characters".into()));
            }
            if ["iss", "aud", "exp", "nbf", "iat"].contains(&claim.as_str()) {
                return Err(e(format!(
                    "`{claim}` is checked by airlock itself; set issuer/audience instead"
                )));
            }
            let m = match c {
                Condition::Exact(s) => Matcher::Exact(s.clone()),
                Condition::Number(n) => Matcher::Exact(n.to_string()),
                Condition::Bool(b) => Matcher::Exact(b.to_string()),
                Condition::Rule(Rule {
                    glob: Some(g),
                    one_of: None,
                                }) => {
                    if g.chars().all(|c| matches!(c, '*' | '?')) {
                        return Err(e(format!(
                            "claim `{claim}`: a pattern of wildcards alone matches anything; leave the claim out or pin it"
                        )));
                    }
                    Matcher::Glob(
                        Glob::new(g).map_err(|err| e(format!("claim `{claim}`: {err}")))?,
                    )
                }
                Condition::Rule(Rule {
                    glob: None,
                    one_of: Some(v),
                }) if !v.is_empty() => Matcher::OneOf(v.clone()),
                Condition::Rule(_) => {
                    return Err(e(format!(
                        "claim `{claim}`: give a value, {{ glob = \"…\" }} or {{ one_of = [\"…\"] }} (exactly one)"
                    )))
                }
            };
            matchers.push((claim.clone(), m));
        }
        if matchers.is_empty() {
            return Err(e(
                "a policy must match at least one claim: with only issuer and audience it would admit every workload of that issuer".into(),
            ));
        }
        // Shared issuers sign for everyone on them: a policy must pin a numeric id, since
        // names can be reused after a rename or deletion and ids cannot.
        let pinned = |k: &str| {
            matchers
                .iter()
                .any(|(c, m)| c == k && !matches!(m, Matcher::Glob(_)))
        };
        let github = self.issuer.starts_with(GITHUB_ISSUER)
            || self
                .issuer
                .trim_end_matches('/')
                .ends_with("/_services/token");
        if github && !pinned("repository_id") && !pinned("repository_owner_id") {
            return Err(e(
                "a GitHub Actions policy must pin repository_id or repository_owner_id (exact or one_of): a repository or owner name can be taken over by someone else after a rename".into(),
            ));
        }
        if self.issuer.trim_end_matches('/') == "https://gitlab.com"
            && !pinned("project_id")
            && !pinned("namespace_id")
        {
            return Err(e(
                "a gitlab.com policy must pin project_id or namespace_id (exact or one_of): paths can be taken over after a rename".into(),
            ));
        }
        let max_ttl = humantime::parse_duration(&self.grant.max_ttl)
            .map_err(|err| e(format!("grant.max_ttl: {err}")))?;
        let scope = Scope::new(
            app_max_ttl,
            &self.grant.env,
            self.grant.models.clone(),
            self.grant.credentials.clone(),
            Some(max_ttl),
        )
        .and_then(|mut s| {
            s.project = self.grant.project.clone();
            s.check(app_max_ttl)?;
            Ok(s)
        })
        .map_err(|err| e(format!("grant: {err}")))?;
        if self.subject_claim.is_empty() || self.subject_claim.len() > 64 {
            return Err(e("subject_claim must be a claim name".into()));
        }
        Ok(Compiled {
            policy: self,
            source,
            algorithms,
            matchers,
            scope,
        })
    }
}

/// A claim's value as text, for matching (strings, integers and booleans only).
fn claim_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Compiled {
    /// Whether verified `claims` satisfy the policy; the matched claims, or why not.
    fn admits(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => *a == self.policy.audience,
            Some(serde_json::Value::Array(v)) => v
                .iter()
                .any(|a| a.as_str() == Some(self.policy.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err("the token's audience is not the one expected".into());
        }
        let mut matched = serde_json::Map::new();
        for (claim, m) in &self.matchers {
            let Some(v) = claims.get(claim).and_then(claim_text) else {
                return Err(format!("the token has no claim `{claim}`"));
            };
            let ok = match m {
                Matcher::Exact(x) => *x == v,
                Matcher::Glob(g) => g.matches(&v),
                Matcher::OneOf(xs) => xs.contains(&v),
            };
            if !ok {
                return Err(format!("claim `{claim}` does not match"));
            }
            matched.insert(claim.clone(), serde_json::Value::String(v));
        }
        Ok(matched)
    }

    /// The policy and where it came from, for listing.
    pub fn listing(&self) -> airlock_api::trust::Listed {
        airlock_api::trust::Listed {
            policy: self.policy.clone(),
            source: self.source.to_string(),
        }
    }
}

// ---- JWKS ------------------------------------------------------------------------------

struct KeySet {
    keys: Vec<Jwk>,
    fetched: Instant,
}

/// Where a policy's keys come from: its `jwks_url`, or its issuer's discovery document. Keys
/// are cached per source, so a policy is only ever checked against the keys its own
/// configuration names (two policies for one issuer with different `jwks_url`s never share).
fn key_source(p: &TrustPolicy) -> String {
    match &p.jwks_url {
        Some(u) => format!("jwks:{u}"),
        None => format!("discovery:{}", p.issuer),
    }
}

/// Issuers' signing keys, cached per key source.
#[derive(Default)]
pub struct JwksCache {
    sets: std::sync::Mutex<HashMap<String, Arc<KeySet>>>,
    attempts: std::sync::Mutex<HashMap<String, Instant>>,
    /// One fetch at a time per source; a slow issuer delays only itself.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Why a fetch failed: the detail goes to the audit log, the caller gets a generic answer.
struct FetchError(String);

async fn get_json(app: &Trust, url: &str) -> Result<serde_json::Value, FetchError> {
    let timeout = Duration::from_secs_f64(app.settings.fetch_timeout_secs);
    let req = Request::get(url)
        .header("accept", "application/json")
        .body(http_body_util::Full::new(Bytes::new()))
        .map_err(|_| FetchError(format!("`{url}` is not a valid address")))?;
    let resp = tokio::time::timeout(timeout, app.client.request(req))
        .await
        .map_err(|_| FetchError(format!("{url} did not answer within {timeout:?}")))?
        .map_err(|e| FetchError(format!("cannot reach {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(FetchError(format!("{url} answered {}", resp.status())));
    }
    let body = tokio::time::timeout(
        timeout,
        http_body_util::Limited::new(resp.into_body(), 1 << 20).collect(),
    )
    .await
    .map_err(|_| FetchError(format!("{url} did not finish within {timeout:?}")))?
    .map_err(|_| FetchError(format!("{url}: body unreadable or over 1 MiB")))?
    .to_bytes();
    serde_json::from_slice(&body).map_err(|_| FetchError(format!("{url} did not answer JSON")))
}

impl JwksCache {
    fn cached(&self, source: &str) -> Option<Arc<KeySet>> {
        self.sets.lock().ok()?.get(source).cloned()
    }

    fn lock_for(&self, source: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.locks.lock() {
            Ok(mut l) => l.entry(source.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    async fn fetch(
        &self,
        app: &Trust,
        p: &TrustPolicy,
        source: &str,
    ) -> Result<Arc<KeySet>, FetchError> {
        if let Ok(mut a) = self.attempts.lock() {
            a.insert(source.to_string(), Instant::now());
        }
        let jwks_url = match &p.jwks_url {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    p.issuer.trim_end_matches('/')
                );
                let d = get_json(app, &url).await?;
                if d.get("issuer").and_then(|i| i.as_str()) != Some(p.issuer.as_str()) {
                    return Err(FetchError(format!(
                        "the discovery document at {url} names another issuer"
                    )));
                }
                let j = d
                    .get("jwks_uri")
                    .and_then(|j| j.as_str())
                    .ok_or_else(|| FetchError(format!("{url} has no jwks_uri")))?
                    .to_string();
                check_url("jwks_uri", &j).map_err(FetchError)?;
                j
            }
        };
        let v = get_json(app, &jwks_url).await?;
        // Keys airlock cannot use (other types, encryption keys) are skipped, not fatal.
        let keys: Vec<Jwk> = v
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| FetchError(format!("{jwks_url} is not a JWK set")))?
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .collect();
        let set = Arc::new(KeySet {
            keys,
            fetched: Instant::now(),
        });
        if let Ok(mut s) = self.sets.lock() {
            s.insert(source.to_string(), set.clone());
        }
        tracing::info!(issuer = %p.issuer, keys = set.keys.len(), "fetched the issuer's signing keys");
        Ok(set)
    }

    /// A policy's keys, fetched when absent, stale or without `kid`, but never more often
    /// than every `jwks_min_refetch_secs` per source, whatever the last fetch's outcome: a
    /// stream of tokens naming unknown kids (or a failing issuer) cannot make airlock hammer
    /// the issuer.
    async fn keys(
        &self,
        app: &Trust,
        p: &TrustPolicy,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, FetchError> {
        let source = key_source(p);
        let max_age = Duration::from_secs(app.settings.jwks_cache_secs);
        let min_gap = Duration::from_secs(app.settings.jwks_min_refetch_secs);
        let usable = |s: &KeySet| {
            s.fetched.elapsed() < max_age
                && match kid {
                    Some(k) => s.keys.iter().any(|j| j.common.key_id.as_deref() == Some(k)),
                    None => !s.keys.is_empty(),
                }
        };
        if let Some(s) = self.cached(&source).filter(|s| usable(s)) {
            return Ok(s);
        }
        let lock = self.lock_for(&source);
        let _one = lock.lock().await;
        // Someone else may have fetched while this one waited.
        let current = self.cached(&source);
        if let Some(s) = current.as_ref().filter(|s| usable(s)) {
            return Ok(s.clone());
        }
        let last = self
            .attempts
            .lock()
            .ok()
            .and_then(|a| a.get(&source).copied());
        if last.is_some_and(|t| t.elapsed() < min_gap) {
            // A set past its age is never used, even while its source is failing: keys the
            // issuer withdrew must stop working.
            return current
                .filter(|s| s.fetched.elapsed() < max_age)
                .ok_or_else(|| {
                    FetchError("the last fetch of these keys failed moments ago".into())
                });
        }
        self.fetch(app, p, &source).await
    }
}

// ---- the exchange ----------------------------------------------------------------------

/// An RFC 6749 §5.2 error, and what the audit log says about it.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    /// For the caller: says which check failed, names no policy and no internal address.
    description: String,
    /// For the audit log, when it knows more than the caller may (policy names, addresses).
    detail: Option<String>,
    /// Set once the JWT's signature verified: the refusal is attributed.
    who: Option<(String, String)>,
}

fn refuse(error: &'static str, description: impl Into<String>) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        error,
        description: description.into(),
        detail: None,
        who: None,
    }
}

fn oauth_json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::PRAGMA,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

struct Granted {
    issued: identity::Issued,
    policy: String,
    subject: String,
    scope: String,
}

/// Unverified peek at the payload, only to choose which policies (and keys) apply; everything
/// used afterwards comes from the verified decode.
fn peek_issuer(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(120).collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    out
}

/// The request's form, wiped when dropped (it carries the identity token).
struct Form(Vec<(String, String)>);

impl Drop for Form {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (k, v) in &mut self.0 {
            k.zeroize();
            v.zeroize();
        }
    }
}

type Claims = serde_json::Map<String, serde_json::Value>;

/// Checks the JWT's signature and registered claims against the keys of one policy's source.
enum Checked {
    Valid(Claims),
    /// No key of the source has the token's kid (and type and algorithm).
    NoKey,
    Invalid(jsonwebtoken::errors::Error),
}

fn check_signature(
    jwt: &str,
    header: &jsonwebtoken::Header,
    keys: &KeySet,
    iss: &str,
    leeway: u64,
) -> Checked {
    let mut v = Validation::new(header.alg);
    v.leeway = leeway;
    v.validate_nbf = true;
    v.validate_aud = false; // checked per policy, against the verified claims
    v.set_issuer(&[iss]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    let mut last = None;
    for k in keys.keys.iter() {
        if let Some(kid) = header.kid.as_deref() {
            if k.common.key_id.as_deref() != Some(kid) {
                continue;
            }
        }
        if matches!(
            k.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            continue;
        }
        if k.common
            .key_algorithm
            .is_some_and(|a| a.to_string() != format!("{:?}", header.alg))
        {
            continue;
        }
        let Ok(dk) = DecodingKey::from_jwk(k) else {
            continue;
        };
        if dk.family() != header.alg.family() {
            continue;
        }
        match jsonwebtoken::decode::<Claims>(jwt, &dk, &v) {
            Ok(t) => return Checked::Valid(t.claims),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Checked::Invalid(e),
        None => Checked::NoKey,
    }
}

async fn exchange_inner(app: &Trust, form: &[(String, String)]) -> Result<Granted, Refusal> {
    let mut seen = std::collections::HashSet::new();
    for (k, _) in form {
        if !seen.insert(k.as_str()) {
            return Err(refuse(
                "invalid_request",
                format!("parameter `{}` appears more than once", short(k)),
            ));
        }
    }
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("grant_type") {
        Some(GRANT_TYPE) => {}
        Some(_) => {
            return Err(refuse(
                "unsupported_grant_type",
                format!("only grant_type={GRANT_TYPE} is supported here"),
            ))
        }
        None => return Err(refuse("invalid_request", "grant_type is missing")),
    }
    if get("actor_token").is_some() || get("actor_token_type").is_some() {
        return Err(refuse(
            "invalid_request",
            "delegation (actor_token) is not supported",
        ));
    }
    if let Some(t) = get("requested_token_type") {
        if t != TYPE_ACCESS_TOKEN {
            return Err(refuse(
                "invalid_request",
                format!("requested_token_type can only be {TYPE_ACCESS_TOKEN}"),
            ));
        }
    }
    let jwt = get("subject_token")
        .ok_or_else(|| refuse("invalid_request", "subject_token is missing"))?
        .trim();
    match get("subject_token_type") {
        Some(TYPE_JWT) | Some(TYPE_ID_TOKEN) => {}
        _ => {
            return Err(refuse(
                "invalid_request",
                format!("subject_token_type must be {TYPE_JWT} (or {TYPE_ID_TOKEN})"),
            ))
        }
    }
    if jwt.len() > MAX_JWT {
        return Err(refuse("invalid_request", "subject_token is too long"));
    }
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| {
        refuse(
            "invalid_request",
            "subject_token is not a signed JWT (unsigned tokens, alg none, are never accepted)",
        )
    })?;
    let iss = peek_issuer(jwt)
        .ok_or_else(|| refuse("invalid_request", "subject_token has no iss claim"))?;
    let all = app.policies.load_full();
    let for_issuer: Vec<&Arc<Compiled>> = all.iter().filter(|c| c.policy.issuer == iss).collect();
    if for_issuer.is_empty() {
        return Err(refuse(
            "invalid_request",
            format!("issuer `{}` is not trusted by any policy", short(&iss)),
        ));
    }
    let candidates: Vec<&Arc<Compiled>> = for_issuer
        .into_iter()
        .filter(|c| c.algorithms.contains(&header.alg))
        .collect();
    if candidates.is_empty() {
        return Err(refuse(
            "invalid_request",
            format!(
                "signature algorithm {:?} is not allowed by the policies for this issuer",
                header.alg
            ),
        ));
    }
    // Verify against each key source the candidates name, in policy order; the policies of the
    // source whose keys verify are the only ones that may admit the token.
    let leeway = app.settings.leeway_secs;
    let mut verified: Option<Claims> = None;
    let mut verified_sources: Vec<String> = Vec::new();
    let mut failure: Option<jsonwebtoken::errors::Error> = None;
    let mut fetch_failed: Option<String> = None;
    let mut tried = Vec::new();
    for c in &candidates {
        let source = key_source(&c.policy);
        if tried.contains(&source) {
            continue;
        }
        tried.push(source.clone());
        let keys = match app.jwks.keys(app, &c.policy, header.kid.as_deref()).await {
            Ok(k) => k,
            Err(FetchError(m)) => {
                fetch_failed = Some(m);
                continue;
            }
        };
        match check_signature(jwt, &header, &keys, &iss, leeway) {
            // Every source is tried: a policy may admit only if its own source verified.
            Checked::Valid(claims) => {
                verified.get_or_insert(claims);
                verified_sources.push(source);
            }
            Checked::NoKey => {}
            Checked::Invalid(e) => failure = Some(e),
        }
    }
    let Some(claims) = verified else {
        use jsonwebtoken::errors::ErrorKind as K;
        if let (None, Some(m)) = (&failure, &fetch_failed) {
            return Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: "temporarily_unavailable",
                description: "cannot fetch the issuer's signing keys right now; try again shortly"
                    .into(),
                detail: Some(format!("cannot fetch the issuer's signing keys: {m}")),
                who: None,
            });
        }
        let why = match failure.as_ref().map(|e| e.kind()) {
            None => "the token's signing key (kid) is not in the issuer's published keys",
            Some(K::ExpiredSignature) => {
                "the identity token has expired; ask the platform for a new one"
            }
            Some(K::ImmatureSignature) => "the identity token is not valid yet (nbf)",
            Some(K::InvalidIssuer) => "the identity token's issuer does not match",
            Some(K::MissingRequiredClaim(_)) => "the identity token lacks exp, iss or aud",
            Some(K::InvalidSignature) => {
                "the identity token's signature does not verify against the issuer's keys"
            }
            Some(_) => "the identity token cannot be verified",
        };
        return Err(refuse("invalid_request", why));
    };
    let now = jsonwebtoken::get_current_timestamp();
    if claims
        .get("iat")
        .and_then(|i| i.as_u64())
        .is_some_and(|iat| iat > now + leeway)
    {
        return Err(refuse(
            "invalid_request",
            "the identity token was issued in the future (iat)",
        ));
    }
    let sub = claims.get("sub").and_then(claim_text).unwrap_or_default();
    // From here on the caller is known: refusals are attributed to the identity.
    let attributed = |error: &'static str, d: String, detail: Option<String>| Refusal {
        status: StatusCode::BAD_REQUEST,
        error,
        description: d,
        detail,
        who: Some((format!("oidc:{}", short(&iss)), short(&sub))),
    };
    let mut admitting: Vec<&&Arc<Compiled>> = candidates
        .iter()
        .filter(|c| verified_sources.contains(&key_source(&c.policy)))
        .collect();
    if let Some(aud) = get("audience") {
        // Same answer whether the named policy does not exist or does not admit: the
        // names of policies are not for callers to probe.
        admitting.retain(|c| c.policy.name == aud);
    }
    let mut public = Vec::new();
    let mut private = Vec::new();
    let mut chosen = None;
    for c in &admitting {
        match c.admits(&claims) {
            Ok(m) => {
                chosen = Some((*c, m));
                break;
            }
            Err(r) => {
                private.push(format!("policy `{}`: {r}", c.policy.name));
                if !public.contains(&r) {
                    public.push(r);
                }
            }
        }
    }
    let Some((policy, matched)) = chosen else {
        let (error, mut d) = if get("audience").is_some() {
            (
                "invalid_target",
                "the policy named by audience does not admit this identity".to_string(),
            )
        } else {
            (
                "invalid_request",
                "no trust policy admits this identity".to_string(),
            )
        };
        // Naming a policy gets no reasons: whether it exists is not for callers to probe.
        if !public.is_empty() && get("audience").is_none() {
            d = format!("{d}: {}", public.join("; "));
        }
        let detail = (!private.is_empty()).then(|| format!("{d} ({})", private.join("; ")));
        return Err(attributed(error, d, detail));
    };
    // scope: space-separated `model:GLOB`, `credential:NAME`, `env:ENV`, `project:NAME`
    // (RFC 6749 §3.3).
    let mut ask = Ask::default();
    if let Some(scope) = get("scope") {
        for item in scope.split_ascii_whitespace() {
            match item.split_once(':') {
                Some(("model", m)) => ask.models.push(m.to_string()),
                Some(("credential", c)) => ask.credentials.push(c.to_string()),
                Some(("env", e)) => ask.env = Some(e.to_string()),
                Some(("project", p)) => ask.project = Some(p.to_string()),
                _ => {
                    return Err(attributed(
                        "invalid_scope",
                        format!(
                            "scope item `{}` is not model:GLOB, credential:NAME, env:ENV or project:NAME",
                            short(item)
                        ),
                        None,
                    ))
                }
            }
        }
    }
    if let Some(t) = get("ttl") {
        ask.ttl = Some(humantime::parse_duration(t).map_err(|e| {
            attributed(
                "invalid_request",
                format!("ttl: {e} (examples: 10m, 1h)"),
                None,
            )
        })?);
    }
    let subject_value = claims
        .get(&policy.policy.subject_claim)
        .and_then(claim_text)
        .unwrap_or_else(|| sub.clone());
    let mut recorded = matched;
    recorded.insert("iss".into(), iss.clone().into());
    recorded.insert("sub".into(), sub.clone().into());
    let origin = Origin {
        subject: format!("oidc:{}:{}", policy.policy.name, short(&subject_value)),
        minted_by: format!("trust:{}", policy.policy.name),
        claims: Some(serde_json::Value::Object(recorded)),
    };
    match identity::issue(&app.issuer, Some(&policy.scope), ask, origin).await {
        Ok(issued) if !app.policies.load().iter().any(|c| Arc::ptr_eq(c, policy)) => {
            // The policy was removed while this exchange ran; its sweep may have missed this.
            let _ = app
                .issuer
                .store
                .revoke_token(&issued.minted.id, crate::util::now_ms())
                .await;
            let _ = app.issuer.tokens.reload_revocations().await;
            Err(attributed(
                "invalid_request",
                "no trust policy admits this identity".into(),
                Some(format!(
                    "policy `{}` was removed during the exchange",
                    policy.policy.name
                )),
            ))
        }
        Ok(issued) => {
            let mut scope = vec![format!("env:{}", issued.row.env)];
            scope.extend(issued.row.models.iter().map(|m| format!("model:{m}")));
            scope.extend(
                issued
                    .row
                    .credentials
                    .iter()
                    .map(|c| format!("credential:{c}")),
            );
            Ok(Granted {
                issued,
                policy: policy.policy.name.clone(),
                subject: short(&sub),
                scope: scope.join(" "),
            })
        }
        Err(IssueError::OutOfScope(m)) => Err(attributed("invalid_scope", m, None)),
        Err(IssueError::Invalid(m)) => Err(attributed("invalid_request", m, None)),
        Err(IssueError::Failed(m)) => Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "the token could not be issued; try again shortly".into(),
            detail: Some(m),
            who: Some((format!("oidc:{}", short(&iss)), short(&sub))),
        }),
    }
}

/// `POST /v1/token/exchange`.
pub async fn exchange(app: Arc<Trust>, req: Request<Body>) -> Response {
    let meta = (
        req.extensions()
            .get::<crate::RequestId>()
            .map(|r| r.0.clone()),
        req.extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
    );
    let form_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let result = if !form_type {
        Err(refuse(
            "invalid_request",
            "send the request form-encoded (Content-Type: application/x-www-form-urlencoded)",
        ))
    } else {
        match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
            Err(_) => Err(refuse("invalid_request", "request body over 64 KiB")),
            Ok(b) => match serde_urlencoded::from_bytes::<Vec<(String, String)>>(&b) {
                Err(_) => Err(refuse("invalid_request", "the form cannot be decoded")),
                Ok(form) => {
                    let form = Form(form);
                    exchange_inner(&app, &form.0).await
                }
            },
        }
    };
    let c = &app.issuer.recorder.counters;
    match &result {
        Ok(_) => c
            .exchanges_granted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        Err(_) => c
            .exchanges_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    };
    match result {
        Ok(g) => {
            let expires_in = g
                .issued
                .minted
                .expires_at
                .saturating_sub(jsonwebtoken::get_current_timestamp());
            let ok = identity::audit_event(
                &app.issuer,
                Event {
                    action: "token.exchange",
                    actor_kind: "workload",
                    actor: Some(format!("trust:{}", g.policy)),
                    subject: Some(g.subject.clone()),
                    target: Some(g.issued.minted.id.clone()),
                    reason: Some(format!("granted {}", g.scope)),
                    status: StatusCode::OK,
                    meta,
                },
            )
            .await;
            if !ok {
                let _ = app
                    .issuer
                    .store
                    .revoke_token(&g.issued.minted.id, crate::util::now_ms())
                    .await;
                return oauth_json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": "temporarily_unavailable", "error_description": "the audit log cannot be written; no token was issued"}),
                );
            }
            oauth_json(
                StatusCode::OK,
                serde_json::json!({
                    "access_token": g.issued.minted.token,
                    "issued_token_type": TYPE_ACCESS_TOKEN,
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "scope": g.scope,
                    "token_id": g.issued.minted.id,
                    "policy": g.policy,
                }),
            )
        }
        Err(r) => {
            let (actor, subject) = match r.who {
                Some((a, s)) => (Some(a), Some(s)),
                None => (None, None),
            };
            identity::audit_event(
                &app.issuer,
                Event {
                    action: "token.exchange",
                    actor_kind: if actor.is_some() {
                        "workload"
                    } else {
                        "anonymous"
                    },
                    actor,
                    subject,
                    target: None,
                    reason: Some(format!(
                        "{}: {}",
                        r.error,
                        r.detail.as_deref().unwrap_or(&r.description)
                    )),
                    status: r.status,
                    meta,
                },
            )
            .await;
            oauth_json(
                r.status,
                serde_json::json!({"error": r.error, "error_description": r.description}),
            )
        }
    }
}

/// Builds the active policy list: the configuration's, then the API's (oldest first). An API
/// policy that no longer passes the checks (the server's limits changed) is skipped, loudly.
pub async fn load_policies(app: &Trust) -> Result<Vec<Arc<Compiled>>, String> {
    let max = app.issuer.max_ttl;
    let mut out = Vec::new();
    for p in &app.configured {
        out.push(Arc::new(p.clone().compile("config", max)?));
    }
    let rows = app
        .issuer
        .store
        .list_trust_policies()
        .await
        .map_err(|e| e.to_string())?;
    for r in rows {
        if app.configured.iter().any(|t| t.name == r.name) {
            tracing::error!(policy = %r.name, "trust policy added through the API skipped: the configuration defines one with the same name (remove it with `airlock trust remove`)");
            continue;
        }
        match serde_json::from_value::<TrustPolicy>(r.policy)
            .map_err(|e| e.to_string())
            .and_then(|p| p.compile("api", max))
        {
            Ok(c) => out.push(Arc::new(c)),
            Err(e) => tracing::error!(policy = %r.name, error = %e, "trust policy skipped"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(claims: &str) -> Result<Compiled, String> {
        let text = format!(
            r#"name = "gha"
issuer = "https://token.actions.githubusercontent.com"
audience = "airlock"
[claims]
{claims}
[grant]
env = "prod"
models = ["gpt-4o-mini"]
"#
        );
        let p: TrustPolicy = toml::from_str(&text).map_err(|e| e.to_string())?;
        p.compile("config", Duration::from_secs(3600))
    }

    #[test]
    fn github_policies_pin_numeric_ids() {
        let e = policy(r#"repository = "acme/app""#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("repository_id"), "{e}");
        let e = policy(r#"repository_id = { glob = "12*" }"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("repository_id"), "{e}");
        assert!(policy("repository_id = 123456\nref = { glob = \"refs/heads/*\" }").is_ok());
        assert!(policy(r#"repository_owner_id = { one_of = ["1", "2"] }"#).is_ok());
    }

    #[test]
    fn conditions_match_exactly_by_glob_or_one_of() {
        let c = policy(
            "repository_id = 123456\nref = { glob = \"refs/heads/*\" }\nenvironment = { one_of = [\"prod\", \"staging\"] }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let claims = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let good = serde_json::json!({"aud": "airlock", "repository_id": "123456", "ref": "refs/heads/main", "environment": "prod"});
        assert!(c.admits(&claims(good.clone())).is_ok());
        let mut numeric = good.clone();
        numeric["repository_id"] = serde_json::json!(123456);
        assert!(c.admits(&claims(numeric)).is_ok());
        for (k, bad) in [
            ("repository_id", serde_json::json!("999999")),
            ("ref", serde_json::json!("refs/tags/v1")),
            ("environment", serde_json::json!("dev")),
            ("aud", serde_json::json!("someone-else")),
            ("aud", serde_json::json!(["x", "y"])),
            ("repository_id", serde_json::json!(["123456"])),
        ] {
            let mut v = good.clone();
            v[k] = bad;
            assert!(c.admits(&claims(v)).is_err(), "{k}");
        }
        let mut aud_list = good.clone();
        aud_list["aud"] = serde_json::json!(["other", "airlock"]);
        assert!(c.admits(&claims(aud_list)).is_ok());
        let mut missing = good;
        if let Some(o) = missing.as_object_mut() {
            o.remove("environment");
        }
        assert!(c.admits(&claims(missing)).is_err());
    }

    #[test]
    fn the_shipped_examples_are_valid_policies() {
        for (file, text) in [
            (
                "github-actions",
                include_str!("../../../examples/trust/github-actions.toml"),
            ),
            (
                "gitlab-ci",
                include_str!("../../../examples/trust/gitlab-ci.toml"),
            ),
            (
                "kubernetes",
                include_str!("../../../examples/trust/kubernetes.toml"),
            ),
        ] {
            let p: TrustPolicy = toml::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            if let Err(e) = p.compile("config", Duration::from_secs(24 * 3600)) {
                panic!("{file}: {e}");
            }
        }
    }

    #[test]
    fn unsafe_policies_are_refused() {
        let base = |extra: &str, claims: &str| {
            let text = format!(
                "name = \"p\"\nissuer = \"https://issuer.example\"\naudience = \"a\"\n{extra}\n[claims]\n{claims}\n[grant]\nenv = \"prod\"\nmodels = [\"*\"]\n"
            );
            toml::from_str::<TrustPolicy>(&text)
                .map_err(|e| e.to_string())
                .and_then(|p| p.compile("config", Duration::from_secs(3600)))
        };
        assert!(base("", "sub = \"x\"").is_ok());
        assert!(base("", "").is_err(), "no claim condition");
        assert!(base("algorithms = [\"HS256\"]", "sub = \"x\"").is_err());
        assert!(base("algorithms = [\"none\"]", "sub = \"x\"").is_err());
        assert!(base("", "aud = \"x\"").is_err());
        assert!(base("jwks_url = \"http://example.com/keys\"", "sub = \"x\"").is_err());
        assert!(base("jwks_url = \"http://127.0.0.1:8200/keys\"", "sub = \"x\"").is_ok());
        assert!(base("", "sub = { glob = \"a\", one_of = [\"b\"] }").is_err());
        assert!(
            base("", "sub = { glob = \"*\" }").is_err(),
            "wildcards alone"
        );
        assert!(base("", "sub = { glob = \"repo:*\" }").is_ok());
        // Shared issuers need a pinned numeric id, GitHub Enterprise's too.
        let shared = |issuer: &str, claims: &str| {
            let text = format!(
                "name = \"p\"\nissuer = \"{issuer}\"\naudience = \"a\"\n[claims]\n{claims}\n[grant]\nenv = \"prod\"\nmodels = [\"*\"]\n"
            );
            toml::from_str::<TrustPolicy>(&text)
                .map_err(|e| e.to_string())
                .and_then(|p| p.compile("config", Duration::from_secs(3600)))
        };
        assert!(shared(
            "https://token.actions.githubusercontent.com/acme-enterprise",
            "repository = \"a/b\""
        )
        .is_err());
        assert!(shared(
            "https://ghe.example.com/_services/token",
            "repository = \"a/b\""
        )
        .is_err());
        assert!(shared("https://gitlab.com", "project_path = \"a/b\"").is_err());
        assert!(shared("https://gitlab.com", "project_id = \"7\"").is_ok());
    }
}
