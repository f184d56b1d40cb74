//! airlock's client tokens: Biscuit (Ed25519) tokens that clients hold instead of provider keys.
//!
//! A token's authority block carries its id, subject, environment, allowed models (globs),
//! allowed credentials and expiry, both as facts (to read them) and as checks (to enforce them):
//!
//! ```text
//! token_id("tok_…"); subject("…"); env("prod"); model("gpt-*"); expires(2026-…Z);
//! check if time($t), $t <= 2026-…Z;
//! check if request_env("prod");
//! check if request_model($m), $m.matches("^(?:gpt-.*)$");
//! check if request_credential($c), {"openai-prod"}.contains($c);   // only when restricted
//! ```
//!
//! Any holder can append a block with more checks ([`attenuate`]); checks only ever narrow.
//! User-supplied strings reach Datalog only as parameters, never spliced into source.
//!
//! [`Verifier`] checks the signature once per distinct token and caches the result (bounded,
//! keyed by the SHA-256 of the token, expiring with the token). Appended blocks may hold only
//! the three check forms [`attenuate`] writes (time limit, model patterns, credential set), with
//! bounded pattern counts and wildcards; any other block is refused before Datalog runs. The
//! accepted checks and the authority block's claims are then evaluated natively per request
//! ([`Verifier::authorize`]): the hot path runs no Datalog and compiles no regular expression.
#![warn(missing_docs)]

pub mod glob;
mod keys;

pub use keys::{parse_public_key, write_private, KeyRing};

use biscuit_auth::builder::{self, AuthorizerBuilder, BlockBuilder, Term};
use biscuit_auth::{error, Biscuit, UnverifiedBiscuit};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every airlock token starts with this, so scanners and people can tell what it is.
pub const TOKEN_PREFIX: &str = "alk_tok_";
/// Hard ceiling on a client token's lifetime (invariant I3).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const MAX_TOKEN_LEN: usize = 16 * 1024;
const MAX_BLOCKS: usize = 16;

/// Why a token was refused or could not be made. Messages say what to do and never contain
/// the token itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed airlock token.
    #[error("invalid token: {0}")]
    Malformed(String),
    /// The signature does not verify, or the key id is unknown.
    #[error("invalid token: the signature does not verify against this server's keys")]
    Forged,
    /// Past its expiry.
    #[error("token expired at {0}; mint a new one")]
    Expired(String),
    /// Revoked by an administrator.
    #[error("token {0} has been revoked")]
    Revoked(String),
    /// Valid, but its scope does not cover this request.
    #[error("{0}")]
    Denied(String),
    /// Bad arguments to mint or attenuate.
    #[error("{0}")]
    Invalid(String),
    /// Key files.
    #[error("key error: {0}")]
    Keys(String),
}

impl TokenError {
    /// Whether the client should see 401 (identity) rather than 403 (scope).
    pub fn is_authentication(&self) -> bool {
        !matches!(self, TokenError::Denied(_))
    }
}

/// What a new token may do.
#[derive(Debug, Clone)]
pub struct MintOptions {
    /// Who or what the token is for (a person, a service account, a workload identity).
    pub subject: String,
    /// Environment tag; only credentials with the same tag serve it (I4).
    pub env: String,
    /// Allowed model globs (at least one; `*` allows every model).
    pub models: Vec<String>,
    /// Allowed credential names; empty means any credential of the environment.
    pub credentials: Vec<String>,
    /// Lifetime, at most [`MAX_TTL`].
    pub ttl: Duration,
    /// The project its use is accounted to (usage, budgets, rate limits), if any.
    pub project: Option<String>,
}

/// A freshly minted token. `Debug` leaves out the token itself.
#[derive(Clone, Serialize)]
pub struct Minted {
    /// The token string to hand to the client (`alk_tok_…`).
    pub token: String,
    /// Its id, for revocation and audit.
    pub id: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// Id of the root key that signed it.
    pub key_id: u32,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC rendering of unix seconds.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn lang(e: error::Token) -> TokenError {
    TokenError::Invalid(format!("cannot build token: {e}"))
}

fn string_set(items: &[String]) -> Term {
    Term::Set(
        items
            .iter()
            .map(|s| builder::string(s))
            .collect::<BTreeSet<_>>(),
    )
}

fn params(list: &[(&str, Term)]) -> HashMap<String, Term> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn validate_name(kind: &str, s: &str) -> Result<(), TokenError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '/'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "{kind} `{s}` must be 1-128 characters of letters, digits and -_.:@/"
        )))
    }
}

/// Mints a token signed by the ring's signing key.
pub fn mint(keys: &KeyRing, o: &MintOptions, now: SystemTime) -> Result<Minted, TokenError> {
    if o.ttl.is_zero() || o.ttl > MAX_TTL {
        return Err(TokenError::Invalid(format!(
            "ttl must be between 1s and 24h (asked for {})",
            humantime::format_duration(o.ttl)
        )));
    }
    validate_name("environment", &o.env)?;
    if o.subject.is_empty() || o.subject.len() > 256 {
        return Err(TokenError::Invalid(
            "subject must be 1-256 characters".into(),
        ));
    }
    // One pattern per entry: a comma inside an entry would turn a checked pattern into
    // several unchecked ones (callers split user lists before they check them).
    let models = o
        .models
        .iter()
        .map(|m| glob::Glob::new(m).map_err(|e| TokenError::Invalid(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if models.is_empty() {
        return Err(TokenError::Invalid(
            "a token needs at least one --model pattern (use '*' for every model)".into(),
        ));
    }
    for c in &o.credentials {
        validate_name("credential", c)?;
    }
    let id = format!("tok_{}", airlock_secrets::random_token(12));
    let exp = unix(now) + o.ttl.as_secs();
    let exp_t = UNIX_EPOCH + Duration::from_secs(exp);
    let model_strs: Vec<&str> = models.iter().map(|g| g.as_str()).collect();
    let (kp, kid) = keys.signing();

    let mut b = Biscuit::builder()
        .fact(builder::fact("airlock_token", &[builder::int(1)]))
        .and_then(|b| b.fact(builder::fact("token_id", &[builder::string(&id)])))
        .and_then(|b| b.fact(builder::fact("subject", &[builder::string(&o.subject)])))
        .and_then(|b| b.fact(builder::fact("env", &[builder::string(&o.env)])))
        .and_then(|b| b.fact(builder::fact("expires", &[builder::date(&exp_t)])))
        .map_err(lang)?;
    for m in &model_strs {
        b = b
            .fact(builder::fact("model", &[builder::string(m)]))
            .map_err(lang)?;
    }
    for c in &o.credentials {
        b = b
            .fact(builder::fact("credential", &[builder::string(c)]))
            .map_err(lang)?;
    }
    if let Some(p) = &o.project {
        validate_name("project", p)?;
        b = b
            .fact(builder::fact("project", &[builder::string(p)]))
            .map_err(lang)?;
    }
    let mut code = String::from(
        "check if time($t), $t <= {exp};\n\
         check if request_env({env});\n\
         check if request_model($m), $m.matches({re});\n",
    );
    if !o.credentials.is_empty() {
        code.push_str("check if request_credential($c), {creds}.contains($c);\n");
    }
    let p = params(&[
        ("exp", builder::date(&exp_t)),
        ("env", builder::string(&o.env)),
        ("re", builder::string(&glob::anchored(&model_strs))),
        ("creds", string_set(&o.credentials)),
    ]);
    let token = b
        .code_with_params(code, p, HashMap::new())
        .map_err(lang)?
        .root_key_id(kid)
        .build(kp)
        .map_err(lang)?;
    let b64 = token.to_base64().map_err(lang)?;
    Ok(Minted {
        token: format!("{TOKEN_PREFIX}{}", b64.trim_end_matches('=')),
        id,
        expires_at: exp,
        key_id: kid,
    })
}

fn decode(token: &str) -> Result<String, TokenError> {
    let t = token.trim();
    if t.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("token is too long".into()));
    }
    let body = t.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
        TokenError::Malformed(if t.starts_with("alk_sa_") {
            "a service-account key cannot call models: exchange it for a token at POST /v1/token (airlock run does this)".into()
        } else if t.starts_with("alk_admin_") {
            "an admin key cannot call models: mint a token (airlock token mint) or use airlock run".into()
        } else {
            "not an airlock token (airlock tokens start with alk_tok_)".into()
        })
    })?;
    if !body
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(TokenError::Malformed(
            "token holds characters outside base64url".into(),
        ));
    }
    let mut padded = body.to_string();
    while padded.len() % 4 != 0 {
        padded.push('=');
    }
    Ok(padded)
}

fn encode(b64: &str) -> String {
    format!("{TOKEN_PREFIX}{}", b64.trim_end_matches('='))
}

/// Narrows a token offline: the result allows at most the given models, credentials and
/// lifetime, and never more than the original. Needs no key and no server.
pub fn attenuate(
    token: &str,
    models: &[String],
    credentials: &[String],
    ttl: Option<Duration>,
    now: SystemTime,
) -> Result<String, TokenError> {
    let unverified = UnverifiedBiscuit::from_base64(decode(token)?)
        .map_err(|_| TokenError::Malformed("cannot decode the token".into()))?;
    if unverified.block_count() >= MAX_BLOCKS {
        return Err(TokenError::Invalid(format!(
            "a token may have at most {MAX_BLOCKS} blocks"
        )));
    }
    let models = glob::parse_list(models).map_err(|e| TokenError::Invalid(e.to_string()))?;
    for c in credentials {
        validate_name("credential", c)?;
    }
    if models.is_empty() && credentials.is_empty() && ttl.is_none() {
        return Err(TokenError::Invalid(
            "nothing to narrow: give --model, --credential or --ttl".into(),
        ));
    }
    let mut code = String::new();
    let mut p = Vec::new();
    if let Some(ttl) = ttl {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(TokenError::Invalid("ttl must be between 1s and 24h".into()));
        }
        let exp = UNIX_EPOCH + Duration::from_secs(unix(now) + ttl.as_secs());
        code.push_str("check if time($t), $t <= {exp};\n");
        p.push(("exp", builder::date(&exp)));
    }
    if !models.is_empty() {
        let strs: Vec<&str> = models.iter().map(|g| g.as_str()).collect();
        code.push_str("check if request_model($m), $m.matches({re});\n");
        p.push(("re", builder::string(&glob::anchored(&strs))));
    }
    if !credentials.is_empty() {
        code.push_str("check if request_credential($c), {creds}.contains($c);\n");
        p.push(("creds", string_set(credentials)));
    }
    let block = BlockBuilder::new()
        .code_with_params(code, params(&p), HashMap::new())
        .map_err(lang)?;
    let narrowed = unverified.append(block).map_err(lang)?;
    Ok(encode(&narrowed.to_base64().map_err(lang)?))
}

/// Checks that an appended block holds only the statements [`attenuate`] writes, and returns
/// what they narrow.
///
/// Anyone holding a token can append a block, so a block is untrusted input. Accepting only
/// these three check forms, each re-derived from the printed source and compared byte for byte
/// (with the block's symbols free of characters that could fake that text), means no appended
/// rule, fact or expression exists; their meaning is fully captured by [`Narrowing`], which
/// the verifier evaluates natively.
///
/// ```text
/// check if time($t), $t <= 2026-11-25T12:00:00Z;
/// check if request_model($m), $m.matches("^(?:gpt\-4o.*)$");
/// check if request_credential($c), {"a", "b"}.contains($c);
/// ```
fn canonical_block(src: &str) -> Result<Narrowing, String> {
    const TIME: &str = "check if time($t), $t <= ";
    const MODEL: (&str, &str) = ("check if request_model($m), $m.matches(\"", "\")");
    const CRED: (&str, &str) = ("check if request_credential($c), {", "}.contains($c)");
    let body = src
        .strip_suffix(";\n")
        .ok_or("an appended block is empty or not in airlock's form")?;
    let mut n = Narrowing::default();
    for stmt in body.split(";\n") {
        if let Some(date) = stmt.strip_prefix(TIME) {
            let ok = date.len() == 20
                && date.ends_with('Z')
                && date
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"-:TZ".contains(&b));
            let t = humantime::parse_rfc3339(date)
                .ok()
                .filter(|_| ok)
                .ok_or("an appended time check is not in airlock's form")?;
            n.expiries.push(unix(t));
        } else if let Some(re) = stmt
            .strip_prefix(MODEL.0)
            .and_then(|r| r.strip_suffix(MODEL.1))
        {
            let globs = glob::from_anchored(re)
                .filter(|g| g.len() <= MAX_PATTERNS_PER_BLOCK)
                .ok_or("an appended model check is not in airlock's form")?;
            let strs: Vec<&str> = globs.iter().map(glob::Glob::as_str).collect();
            if glob::anchored(&strs) != re {
                return Err("an appended model check is not in airlock's form".into());
            }
            n.models.push(globs);
        } else if let Some(set) = stmt
            .strip_prefix(CRED.0)
            .and_then(|r| r.strip_suffix(CRED.1))
        {
            let names: Option<Vec<&str>> = set
                .split(", ")
                .map(|q| q.strip_prefix('"').and_then(|q| q.strip_suffix('"')))
                .collect();
            let names = names
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= MAX_PATTERNS_PER_BLOCK
                        && n.iter().all(|c| validate_name("credential", c).is_ok())
                })
                .ok_or("an appended credential check is not in airlock's form")?;
            n.credentials
                .push(names.into_iter().map(str::to_string).collect());
        } else {
            return Err(
                "an appended block holds a statement not in the form airlock accepts; \
                 narrow tokens with `airlock token attenuate`"
                    .into(),
            );
        }
    }
    Ok(n)
}

/// Most patterns (or credential names) one appended check may list.
const MAX_PATTERNS_PER_BLOCK: usize = 32;

/// What appended blocks narrow, read from their (validated) checks and evaluated natively.
#[derive(Debug, Default)]
struct Narrowing {
    expiries: Vec<u64>,
    /// Each inner list: the request's model must match one of them.
    models: Vec<Vec<glob::Glob>>,
    /// Each inner list: the request's credential must be one of them.
    credentials: Vec<Vec<String>>,
}

/// Symbols an appended block introduces may not hold characters that could make its printed
/// source read as something it is not (Biscuit prints strings and names without escaping).
fn symbols_plain(symbols: &[String]) -> bool {
    symbols.iter().all(|s| {
        !s.chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | ',' | ';' | '{' | '}'))
    })
}

/// Expiries stated by canonical time checks anywhere in a block, for display only.
fn stated_expiries(src: &str) -> Vec<u64> {
    src.split(";\n")
        .filter_map(|s| s.strip_prefix("check if time($t), $t <= "))
        .filter_map(|d| humantime::parse_rfc3339(d.trim_end_matches(";\n")).ok())
        .map(unix)
        .collect()
}

/// What a token says, read without verifying its signature (for `token attenuate --json`
/// and diagnostics). Never trust this for authorization.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Number of blocks (1 = not attenuated).
    pub blocks: usize,
    /// Root key id.
    pub key_id: Option<u32>,
    /// Earliest canonical expiry across all blocks (unix seconds), if readable.
    pub expires_at: Option<u64>,
    /// Datalog source of each block.
    pub source: Vec<String>,
}

/// Reads a token without verifying it.
pub fn inspect(token: &str) -> Result<Inspection, TokenError> {
    let u = UnverifiedBiscuit::from_base64(decode(token)?)
        .map_err(|_| TokenError::Malformed("cannot decode the token".into()))?;
    let mut source = Vec::new();
    let mut exp: Option<u64> = None;
    for i in 0..u.block_count() {
        let s = u.print_block_source(i).map_err(lang)?;
        for e in stated_expiries(&s) {
            exp = Some(exp.map_or(e, |x| x.min(e)));
        }
        source.push(s);
    }
    Ok(Inspection {
        blocks: u.block_count(),
        key_id: u.root_key_id(),
        expires_at: exp,
        source,
    })
}

/// A token whose signature verified, with the claims of its authority block.
pub struct Verified {
    /// SHA-256 of the token string (the cache key; safe to log as a short prefix).
    pub hash: [u8; 32],
    /// Token id (from the authority block).
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Environment.
    pub env: String,
    /// Allowed model globs of the authority block (attenuation may narrow further).
    pub models: Vec<String>,
    /// Allowed credentials of the authority block (empty: any of the environment).
    pub credentials: Vec<String>,
    /// Earliest expiry over all blocks, unix seconds.
    pub expires_at: u64,
    /// Number of blocks; > 1 means attenuated.
    pub blocks: usize,
    /// The project its use is accounted to.
    pub project: Option<String>,
    model_globs: Vec<glob::Glob>,
    narrowing: Narrowing,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("id", &self.id)
            .field("env", &self.env)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What one request asks of a token.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The model asked for.
    pub model: &'a str,
    /// The credential that would serve it.
    pub credential: &'a str,
    /// That credential's environment.
    pub credential_env: &'a str,
}

/// Verifies tokens against a key ring, with a bounded cache.
pub struct Verifier {
    keys: Arc<KeyRing>,
    cache: quick_cache::sync::Cache<[u8; 32], Arc<Verified>>,
}

impl Verifier {
    /// A verifier holding at most `capacity` verified tokens.
    pub fn new(keys: Arc<KeyRing>, capacity: usize) -> Self {
        Verifier {
            keys,
            cache: quick_cache::sync::Cache::new(capacity.max(16)),
        }
    }

    /// The key ring in use.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Checks the token's signature and expiry and reads its claims; cached per token.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Arc<Verified>, TokenError> {
        let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let now_s = unix(now);
        if let Some(v) = self.cache.get(&hash) {
            if now_s > v.expires_at {
                let _ = self.cache.remove(&hash);
                return Err(TokenError::Expired(rfc3339(v.expires_at)));
            }
            return Ok(v);
        }
        let v = Arc::new(self.verify_uncached(token, hash)?);
        if now_s > v.expires_at {
            return Err(TokenError::Expired(rfc3339(v.expires_at)));
        }
        self.cache.insert(hash, v.clone());
        Ok(v)
    }

    fn verify_uncached(&self, token: &str, hash: [u8; 32]) -> Result<Verified, TokenError> {
        let b64 = decode(token)?;
        let keys = self.keys.clone();
        let biscuit = Biscuit::from_base64(&b64, move |kid: Option<u32>| {
            keys.public(kid).ok_or(error::Format::UnknownPublicKey)
        })
        .map_err(|e| match e {
            error::Token::Format(error::Format::Signature(_))
            | error::Token::Format(error::Format::UnknownPublicKey) => TokenError::Forged,
            _ => TokenError::Malformed("cannot decode the token".into()),
        })?;
        if biscuit.block_count() > MAX_BLOCKS {
            return Err(TokenError::Malformed(format!(
                "more than {MAX_BLOCKS} blocks"
            )));
        }
        // Appended blocks are untrusted input: refuse anything but attenuate's own checks
        // before the Datalog engine sees the token.
        let mut expires_at = u64::MAX;
        let mut narrowing = Narrowing::default();
        for i in 1..biscuit.block_count() {
            if !matches!(biscuit.block_external_key(i), Ok(None)) {
                return Err(TokenError::Malformed(
                    "third-party blocks are not accepted".into(),
                ));
            }
            let symbols = biscuit.block_symbols(i).map_err(lang)?;
            if !symbols_plain(&symbols) {
                return Err(TokenError::Malformed(
                    "an appended block is not in the form airlock accepts".into(),
                ));
            }
            let src = biscuit.print_block_source(i).map_err(lang)?;
            let n = canonical_block(&src).map_err(TokenError::Malformed)?;
            for e in &n.expiries {
                expires_at = expires_at.min(*e);
            }
            narrowing.models.extend(n.models);
            narrowing.credentials.extend(n.credentials);
            if narrowing.models.iter().map(Vec::len).sum::<usize>() > 2 * MAX_PATTERNS_PER_BLOCK {
                return Err(TokenError::Malformed(
                    "the token's narrowing lists too many patterns".into(),
                ));
            }
        }
        let mut az = AuthorizerBuilder::new()
            .set_limits(limits())
            .build(&biscuit)
            .map_err(|_| TokenError::Malformed("cannot load the token".into()))?;
        let one = |az: &mut biscuit_auth::Authorizer, pred: &str| -> Vec<String> {
            let rule = format!("q($x) <- {pred}($x)");
            az.query(rule.as_str())
                .map(|v: Vec<(String,)>| v.into_iter().map(|(s,)| s).collect())
                .unwrap_or_default()
        };
        let id = one(&mut az, "token_id");
        let subject = one(&mut az, "subject");
        let env = one(&mut az, "env");
        let mut models = one(&mut az, "model");
        let mut credentials = one(&mut az, "credential");
        let mut project = one(&mut az, "project");
        if project.len() > 1 {
            return Err(TokenError::Malformed(
                "token carries more than one project".into(),
            ));
        }
        let expires: Vec<(SystemTime,)> = az
            .query("q($x) <- expires($x)")
            .map_err(|_| TokenError::Malformed("token has no expiry".into()))?;
        if [id.len(), subject.len(), env.len(), expires.len()] != [1, 1, 1, 1] {
            return Err(TokenError::Malformed(
                "token must carry exactly one id, subject, environment and expiry".into(),
            ));
        }
        let (Some(id), Some(subject), Some(env), Some((exp,))) =
            (id.first(), subject.first(), env.first(), expires.first())
        else {
            return Err(TokenError::Malformed(
                "token lacks airlock's authority facts (id, subject, env, expiry)".into(),
            ));
        };
        models.sort();
        credentials.sort();
        let model_globs = glob::parse_list(&models)
            .map_err(|_| TokenError::Malformed("the token's model patterns are invalid".into()))?;
        let expires_at = expires_at.min(unix(*exp));
        Ok(Verified {
            hash,
            id: id.clone(),
            subject: subject.clone(),
            env: env.clone(),
            models,
            credentials,
            expires_at,
            blocks: biscuit.block_count(),
            project: project.pop(),
            model_globs,
            narrowing,
        })
    }

    /// Decides one request against the token's scope: its environment, the authority block's
    /// model patterns and credentials, every appended narrowing, and the earliest time limit.
    /// The checks are the ones the token's blocks state; because appended blocks are accepted
    /// only in attenuate's forms (see [`canonical_block`]), evaluating them here is exactly
    /// what a Datalog authorizer would decide, without running Datalog or re-compiling its
    /// regular expressions on the hot path.
    pub fn authorize(
        &self,
        v: &Verified,
        r: Request<'_>,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        if unix(now) > v.expires_at {
            return Err(TokenError::Expired(rfc3339(v.expires_at)));
        }
        if r.credential_env != v.env {
            return Err(TokenError::Denied(format!(
                "token is for environment `{}` and cannot use credential `{}` of environment `{}`",
                v.env, r.credential, r.credential_env
            )));
        }
        let model_ok = v.model_globs.iter().any(|g| g.matches(r.model))
            && v.narrowing
                .models
                .iter()
                .all(|set| set.iter().any(|g| g.matches(r.model)));
        if !model_ok {
            return Err(TokenError::Denied(format!(
                "token does not allow model `{}` (allowed: {})",
                r.model,
                v.models.join(", ")
            )));
        }
        if !v.allows_credential(r.credential) {
            return Err(TokenError::Denied(format!(
                "token does not allow credential `{}`",
                r.credential
            )));
        }
        Ok(())
    }

    /// Forgets a cached token (after revocation the gateway refuses it before this matters,
    /// but dropping it frees memory at once).
    pub fn forget(&self, hash: &[u8; 32]) {
        let _ = self.cache.remove(hash);
    }
}

impl Verified {
    /// Whether the token (with every appended block) may use this credential for some model.
    pub fn allows_credential(&self, credential: &str) -> bool {
        (self.credentials.is_empty() || self.credentials.iter().any(|c| c == credential))
            && self
                .narrowing
                .credentials
                .iter()
                .all(|set| set.iter().any(|c| c == credential))
    }
}

fn limits() -> biscuit_auth::AuthorizerLimits {
    biscuit_auth::AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        // Generous: the default 1 ms trips on a loaded 2-core machine.
        max_time: Duration::from_millis(50),
    }
}

#[cfg(test)]
mod tests;
