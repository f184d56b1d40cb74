//! OpenBao / HashiCorp Vault over its HTTP API: KV v2 reads and Transit (wrap, unwrap,
//! rewrap, rotate). Written against the API directly rather than with `vaultrs`, which
//! brings reqwest: airlock keeps one HTTP and TLS stack (hyper + rustls) for everything.

use crate::{redact_words, HttpClient};
use airlock_secrets::{ResolveError, Secret};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// `[secrets.vault]`: where OpenBao/Vault is and how airlock logs in. Unset values come from
/// `VAULT_ADDR`/`BAO_ADDR` and `VAULT_TOKEN`/`BAO_TOKEN`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// `http(s)://host:port`.
    pub addr: Option<String>,
    /// `token` (default), `approle` or `kubernetes`.
    pub auth: Option<String>,
    /// A file holding the token (re-read when Vault refuses it, so an agent may rotate it).
    pub token_file: Option<PathBuf>,
    /// AppRole role id.
    pub role_id: Option<String>,
    /// A file holding the AppRole secret id.
    pub secret_id_file: Option<PathBuf>,
    /// Kubernetes auth role.
    pub role: Option<String>,
    /// The service-account JWT (default: the projected token path of a pod).
    pub jwt_file: Option<PathBuf>,
    /// Where the auth method is mounted (default `approle` / `kubernetes`).
    pub auth_mount: Option<String>,
    /// Vault Enterprise / OpenBao namespace.
    pub namespace: Option<String>,
    /// Where Transit is mounted, for `transit://KEY` (default `transit`).
    pub transit_mount: Option<String>,
}

enum Auth {
    /// A token from a file or the environment.
    Token {
        file: Option<PathBuf>,
        env: Option<Arc<Secret>>,
    },
    AppRole {
        mount: String,
        role_id: String,
        secret_id_file: PathBuf,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

struct Session {
    token: Arc<Secret>,
    /// When a login-issued token should be renewed by logging in again.
    renew_at: Option<Instant>,
    /// Whether airlock logged in for this token (and so should revoke it when replacing it).
    issued: bool,
    at: Instant,
}

/// Shortest time between two logins forced by a refused token.
const RELOGIN_EVERY: Duration = Duration::from_secs(10);

/// A Vault client.
pub struct Vault {
    addr: String,
    namespace: Option<String>,
    transit_mount: String,
    auth: Auth,
    session: tokio::sync::Mutex<Option<Session>>,
    http: HttpClient,
}

/// The default path of a pod's projected service-account token.
const K8S_JWT: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl Vault {
    /// Builds the client from configuration and the environment; `None` when no address is
    /// configured anywhere.
    pub fn new(
        cfg: &VaultConfig,
        env: &dyn Fn(&str) -> Option<String>,
        http: HttpClient,
    ) -> Result<Option<Self>, String> {
        let Some(addr) = cfg
            .addr
            .clone()
            .or_else(|| env("VAULT_ADDR"))
            .or_else(|| env("BAO_ADDR"))
        else {
            return Ok(None);
        };
        let addr = addr.trim_end_matches('/').to_string();
        if !(addr.starts_with("http://") || addr.starts_with("https://"))
            || addr.parse::<http::Uri>().is_err()
        {
            return Err(format!(
                "[secrets.vault] addr `{addr}` must be an http:// or https:// URL"
            ));
        }
        let auth = match cfg.auth.as_deref().unwrap_or("token") {
            "token" => Auth::Token {
                file: cfg.token_file.clone(),
                env: env("VAULT_TOKEN")
                    .or_else(|| env("BAO_TOKEN"))
                    .map(|t| Arc::new(Secret::new(t))),
            },
            "approle" => Auth::AppRole {
                mount: cfg.auth_mount.clone().unwrap_or_else(|| "approle".into()),
                role_id: cfg
                    .role_id
                    .clone()
                    .ok_or("[secrets.vault] auth = \"approle\" needs role_id")?,
                secret_id_file: cfg
                    .secret_id_file
                    .clone()
                    .ok_or("[secrets.vault] auth = \"approle\" needs secret_id_file")?,
            },
            "kubernetes" => Auth::Kubernetes {
                mount: cfg
                    .auth_mount
                    .clone()
                    .unwrap_or_else(|| "kubernetes".into()),
                role: cfg
                    .role
                    .clone()
                    .ok_or("[secrets.vault] auth = \"kubernetes\" needs role")?,
                jwt_file: cfg.jwt_file.clone().unwrap_or_else(|| K8S_JWT.into()),
            },
            other => {
                return Err(format!(
                    "[secrets.vault] auth `{other}`: use token, approle or kubernetes"
                ))
            }
        };
        Ok(Some(Vault {
            addr,
            namespace: cfg.namespace.clone().filter(|n| !n.is_empty()),
            transit_mount: cfg
                .transit_mount
                .clone()
                .unwrap_or_else(|| "transit".into()),
            auth,
            session: tokio::sync::Mutex::new(None),
            http,
        }))
    }

    /// The address (for messages).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The Transit mount used when a `transit://` KEK names only a key.
    pub fn transit_mount(&self) -> &str {
        &self.transit_mount
    }

    /// The session token; a new one when it is about to expire, or when `dead` is the
    /// current token (Vault no longer knows it) and the last login is not too recent.
    async fn token(&self, dead: Option<&Secret>) -> Result<Arc<Secret>, ResolveError> {
        let mut s = self.session.lock().await;
        let mut old = None;
        if let Some(sess) = s.as_ref() {
            let expiring = sess.renew_at.is_some_and(|t| Instant::now() >= t);
            let refused = dead.is_some_and(|d| d.ct_eq(&sess.token));
            if refused && sess.at.elapsed() < RELOGIN_EVERY {
                return Err(ResolveError::Refused(
                    "Vault refused airlock's token and it logged in less than 10s ago".into(),
                ));
            }
            if !refused && !expiring {
                return Ok(sess.token.clone());
            }
            if sess.issued {
                old = Some(sess.token.clone());
            }
        }
        let sess = self.login().await?;
        let t = sess.token.clone();
        *s = Some(sess);
        drop(s);
        // The replaced login token is revoked (best effort), so refreshes leave none behind.
        if let Some(old) = old {
            let _ = self
                .send(
                    Method::POST,
                    "auth/token/revoke-self",
                    Some(Zeroizing::new(b"{}".to_vec())),
                    Some(&old),
                )
                .await;
        }
        Ok(t)
    }

    async fn login(&self) -> Result<Session, ResolveError> {
        let read = |p: &PathBuf, what: &str| -> Result<Secret, ResolveError> {
            let text = std::fs::read_to_string(p).map_err(|e| {
                ResolveError::Unavailable(format!(
                    "cannot read the Vault {what} file {}: {}",
                    p.display(),
                    e.kind()
                ))
            })?;
            airlock_secrets::value_to_secret(text, &format!("the Vault {what} file"))
        };
        let (mount, body) = match &self.auth {
            Auth::Token { file: Some(f), .. } => {
                return Ok(Session {
                    token: Arc::new(read(f, "token")?),
                    renew_at: None,
                    issued: false,
                    at: Instant::now(),
                })
            }
            Auth::Token { file: None, env } => {
                return match env {
                    Some(t) => Ok(Session {
                        token: t.clone(),
                        renew_at: None,
                        issued: false,
                        at: Instant::now(),
                    }),
                    None => Err(ResolveError::Refused(
                        "no Vault token: set VAULT_TOKEN (or BAO_TOKEN) for the server, or [secrets.vault] token_file / auth".into(),
                    )),
                }
            }
            Auth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => {
                let sid = read(secret_id_file, "AppRole secret id")?;
                (mount, LoginBody::AppRole(role_id.clone(), sid))
            }
            Auth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = read(jwt_file, "service-account token")?;
                (mount, LoginBody::Kubernetes(role.clone(), jwt))
            }
        };
        let json = body.to_json();
        let resp = self
            .send(
                Method::POST,
                &format!("auth/{mount}/login"),
                Some(json),
                None,
            )
            .await?;
        let auth = resp.get("auth").cloned().unwrap_or(Value::Null);
        let token = match auth.get("client_token") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => {
                return Err(ResolveError::Refused(format!(
                    "Vault login at auth/{mount} returned no token"
                )))
            }
        };
        let lease = auth
            .get("lease_duration")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(Session {
            token: Arc::new(Secret::new(token)),
            // Log in again when 80% of the lease has passed.
            renew_at: (lease > 0).then(|| Instant::now() + Duration::from_secs(lease * 8 / 10)),
            issued: true,
            at: Instant::now(),
        })
    }

    /// One authenticated call. On "permission denied", the token is checked with
    /// `lookup-self`: a token Vault still knows means the policy said no (the answer stands);
    /// a dead one is replaced once (re-read or re-login, at most every 10 s) and the call
    /// repeated.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Value, ResolveError> {
        let token = self.token(None).await?;
        match self
            .send(method.clone(), path, body.clone(), Some(&token))
            .await
        {
            Err(ResolveError::Refused(m)) if m.contains("permission denied") => {
                if self
                    .send(Method::GET, "auth/token/lookup-self", None, Some(&token))
                    .await
                    .is_ok()
                {
                    return Err(ResolveError::Refused(m));
                }
                let fresh = self.token(Some(&token)).await?;
                if fresh.ct_eq(&token) {
                    return Err(ResolveError::Refused(m));
                }
                self.send(method, path, body, Some(&fresh)).await
            }
            other => other,
        }
    }

    #[allow(clippy::disallowed_methods)] // the Vault token goes to Vault
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<Vec<u8>>>,
        token: Option<&Secret>,
    ) -> Result<Value, ResolveError> {
        let url = format!("{}/v1/{path}", self.addr);
        let mut b = Request::builder().method(method).uri(&url);
        if let Some(h) = b.headers_mut() {
            if let Some(t) = token {
                if let Ok(mut v) = HeaderValue::from_str(t.expose_to_store()) {
                    v.set_sensitive(true);
                    h.insert("x-vault-token", v);
                }
            }
            if let Some(ns) = &self.namespace {
                if let Ok(v) = HeaderValue::from_str(ns) {
                    h.insert("x-vault-namespace", v);
                }
            }
            h.insert("content-type", HeaderValue::from_static("application/json"));
        }
        let body = body.map(|b| Bytes::from(b.to_vec())).unwrap_or_default();
        let req = b
            .body(Full::new(body))
            .map_err(|_| ResolveError::Invalid(format!("bad Vault URL {}", self.addr)))?;
        let unreachable =
            |what: String| ResolveError::Unavailable(format!("Vault at {} {what}", self.addr));
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|_| unreachable("cannot be reached".into()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|_| unreachable("sent an unreadable answer".into()))?
            .to_bytes();
        let raw = Zeroizing::new(bytes.to_vec());
        drop(bytes);
        let json: Value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(json);
        }
        let said = json
            .get("errors")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|s| !s.is_empty())
            .map(|s| redact_words(&s.chars().take(300).collect::<String>()))
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let op = path.split('/').take(3).collect::<Vec<_>>().join("/");
        Err(match status {
            StatusCode::NOT_FOUND => {
                ResolveError::NotFound(format!("Vault has nothing at {op}: {said}"))
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                // 503 is a sealed or standby Vault: not an answer about the secret.
                unreachable(format!("answered {}: {said}", s.as_u16()))
            }
            StatusCode::FORBIDDEN => {
                ResolveError::Refused(format!("Vault refused {op}: permission denied ({said})"))
            }
            s => ResolveError::Refused(format!("Vault refused {op} ({}): {said}", s.as_u16())),
        })
    }

    /// Reads one field of a KV v2 secret; returns it with the version read.
    pub async fn kv_read(
        &self,
        mount: &str,
        path: &str,
        field: &str,
        version: Option<u64>,
    ) -> Result<(Secret, String), ResolveError> {
        let mut p = format!("{mount}/data/{path}");
        if let Some(v) = version {
            p.push_str(&format!("?version={v}"));
        }
        let what = format!("vault://{mount}/{path}#{field}");
        let mut json = self.call(Method::GET, &p, None).await?;
        let meta_version = json
            .pointer("/data/metadata/version")
            .and_then(Value::as_u64);
        let value = json
            .pointer_mut("/data/data")
            .and_then(|d| d.as_object_mut())
            .and_then(|d| d.remove(field));
        let version = meta_version.map(|v| v.to_string()).unwrap_or_default();
        match value {
            Some(Value::String(s)) => Ok((airlock_secrets::value_to_secret(s, &what)?, version)),
            Some(_) => Err(ResolveError::Invalid(format!("{what} is not a string"))),
            None if json.pointer("/data/data").is_some_and(Value::is_null) => {
                Err(ResolveError::NotFound(format!(
                    "{what}: version {version} was deleted or destroyed"
                )))
            }
            None => Err(ResolveError::NotFound(format!(
                "{what}: the secret has no field `{field}`"
            ))),
        }
    }

    /// Whether the server answers and the token is accepted (for `doctor`).
    pub async fn check(&self) -> Result<String, ResolveError> {
        let json = self
            .call(Method::GET, "auth/token/lookup-self", None)
            .await?;
        let ttl = json
            .pointer("/data/ttl")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(if ttl == 0 {
            "token accepted (no expiry)".into()
        } else {
            format!("token accepted, {ttl}s left")
        })
    }

    fn transit_path(&self, key: &str) -> (String, String) {
        match key.split_once('/') {
            Some((m, k)) => (m.to_string(), k.to_string()),
            None => (self.transit_mount.clone(), key.to_string()),
        }
    }

    /// Wraps a data key under Transit key `key` (`KEY` or `MOUNT/KEY`); returns the
    /// ciphertext (`vault:vN:…`) and its version.
    pub async fn transit_encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), ResolveError> {
        let (mount, k) = self.transit_path(key);
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(plaintext));
        let body = json_body(&[("plaintext", b64.as_str())]);
        let json = self
            .call(Method::POST, &format!("{mount}/encrypt/{k}"), Some(body))
            .await?;
        ciphertext_of(&json)
    }

    /// Unwraps a data key.
    pub async fn transit_decrypt(
        &self,
        key: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ResolveError> {
        let (mount, k) = self.transit_path(key);
        let ct = std::str::from_utf8(ciphertext)
            .map_err(|_| ResolveError::Invalid("a Transit ciphertext is not text".into()))?;
        let body = json_body(&[("ciphertext", ct)]);
        let mut json = self
            .call(Method::POST, &format!("{mount}/decrypt/{k}"), Some(body))
            .await?;
        let Some(Value::String(p)) = json.pointer_mut("/data/plaintext").map(Value::take) else {
            return Err(ResolveError::Unavailable(
                "Transit decrypt returned no plaintext".into(),
            ));
        };
        let p = Zeroizing::new(p);
        base64::engine::general_purpose::STANDARD
            .decode(p.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| ResolveError::Unavailable("Transit returned bad base64".into()))
    }

    /// Rewraps a ciphertext under the key's newest version without revealing it.
    pub async fn transit_rewrap(
        &self,
        key: &str,
        ciphertext: &[u8],
    ) -> Result<(Vec<u8>, String), ResolveError> {
        let (mount, k) = self.transit_path(key);
        let ct = std::str::from_utf8(ciphertext)
            .map_err(|_| ResolveError::Invalid("a Transit ciphertext is not text".into()))?;
        let body = json_body(&[("ciphertext", ct)]);
        let json = self
            .call(Method::POST, &format!("{mount}/rewrap/{k}"), Some(body))
            .await?;
        ciphertext_of(&json)
    }

    /// Adds a new version to a Transit key.
    pub async fn transit_rotate(&self, key: &str) -> Result<(), ResolveError> {
        let (mount, k) = self.transit_path(key);
        self.call(
            Method::POST,
            &format!("{mount}/keys/{k}/rotate"),
            Some(Zeroizing::new(b"{}".to_vec())),
        )
        .await
        .map(|_| ())
    }
}

enum LoginBody {
    AppRole(String, Secret),
    Kubernetes(String, Secret),
}

impl LoginBody {
    #[allow(clippy::disallowed_methods)] // a Vault login secret goes to Vault
    fn to_json(&self) -> Zeroizing<Vec<u8>> {
        match self {
            LoginBody::AppRole(role_id, sid) => json_body(&[
                ("role_id", role_id.as_str()),
                ("secret_id", sid.expose_to_store()),
            ]),
            LoginBody::Kubernetes(role, jwt) => {
                json_body(&[("role", role.as_str()), ("jwt", jwt.expose_to_store())])
            }
        }
    }
}

/// A flat JSON object of strings, built in a buffer that is wiped when dropped.
fn json_body(fields: &[(&str, &str)]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(256));
    out.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // serde_json writes each string with its escapes straight into the buffer.
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, v);
    }
    out.push(b'}');
    out
}

fn ciphertext_of(json: &Value) -> Result<(Vec<u8>, String), ResolveError> {
    let ct = json
        .pointer("/data/ciphertext")
        .and_then(Value::as_str)
        .ok_or_else(|| ResolveError::Unavailable("Transit returned no ciphertext".into()))?;
    // `vault:v3:…`
    let version = ct.split(':').nth(1).unwrap_or("").to_string();
    Ok((ct.as_bytes().to_vec(), version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_escape() {
        let b = json_body(&[("a", "x\"y"), ("b", "z")]);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["a"], "x\"y");
        assert_eq!(v["b"], "z");
    }
}
