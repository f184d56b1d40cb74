//! Management commands over the admin API.
//!
//! Why one file: the admin API client and the printing of each command's answer, one function
//! per command group. The answers are read into `airlock-api` types; the usage report (whose
//! columns depend on its grouping), `credential verify --old`, the anomaly records and the
//! public token endpoints (OAuth's own format) are still read as JSON.

use crate::{
    print_json, AdminKeyCmd, CredentialCmd, Failure, IncidentCmd, RunArgs, ServiceAccountCmd,
    TokenCmd, TrustCmd,
};
use airlock_api::credentials::{
    Credential, CredentialDetail, Credentials, Doctor, KekRotation, KeyAge, NewCredential,
    Rotation, Suspension, Verification,
};
use airlock_api::SecretValue;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) struct Admin {
    url: String,
    token: String,
    client: airlock_gateway::util::HttpClient,
}

impl Admin {
    pub(crate) fn from_env() -> Result<Self, Failure> {
        let url = crate::setting("AIRLOCK_URL").unwrap_or_else(|| "http://127.0.0.1:8400".into());
        let token = crate::setting("AIRLOCK_ADMIN_TOKEN").ok_or_else(|| {
            Failure::usage(
                "AIRLOCK_ADMIN_TOKEN is not set: export the admin key that `airlock init` printed",
            )
        })?;
        let client = airlock_gateway::util::http_client(Duration::from_secs(5))
            .map_err(|e| Failure::usage(e.to_string()))?;
        Ok(Admin {
            url: url.trim_end_matches('/').to_string(),
            token,
            client,
        })
    }

    /// GET an admin API path (below `/admin/v1`).
    pub(crate) async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    /// POST a JSON body to an admin API path (below `/admin/v1`).
    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `method` on an admin API path with a typed body, the answer read as the API's type for
    /// it (`airlock-api`): a field the server and the CLI disagree on fails here, loudly.
    pub(crate) async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, Failure> {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| Failure::usage(format!("cannot encode the request: {e}")))?;
        let changes = method != Method::GET;
        let v = self.call(method, path, body).await?;
        T::deserialize(&v).map_err(|e| {
            // A change the server made is not to be retried because its answer was unreadable
            // (a second lockdown would retire the tokens just minted).
            let done = if changes {
                "the server accepted the request and made the change, but "
            } else {
                ""
            };
            let mut raw = v.to_string();
            raw.truncate(raw.floor_char_boundary(2000));
            Failure::remote(format!(
                "{done}its answer to {path} is not what this airlock expects ({e}); are the CLI and the server the same version? The answer: {raw}"
            ))
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        self.call_coded(method, path, body)
            .await
            .map_err(|(f, _)| f)
    }

    /// As `call`, with the API's error code (`nothing_to_rotate`, …) beside a failure.
    async fn call_coded(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (Failure, Option<String>)> {
        let uri = format!("{}/admin/v1{path}", self.url);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| {
                (
                    Failure::usage(format!("bad AIRLOCK_URL {}: {e}", self.url)),
                    None,
                )
            })?;
        let resp = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .map_err(|_| (Failure::remote(format!("airlock at {} did not answer within 60s", self.url)), None))?
            .map_err(|_| (Failure::remote(format!("cannot reach airlock at {} (is `airlock serve` running? is AIRLOCK_URL right?)", self.url)), None))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                (
                    Failure::remote(format!("reading the answer failed: {e}")),
                    None,
                )
            })?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let msg = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        let code = v
            .pointer("/error/code")
            .and_then(Value::as_str)
            .map(str::to_string);
        Err((
            Failure {
                code: if status.is_server_error() { 3 } else { 2 },
                message: msg,
            },
            code,
        ))
    }
}

/// The key for `--secret-stdin`: typed at a terminal without echo, or piped.
fn read_secret_stdin() -> Result<zeroize::Zeroizing<String>, Failure> {
    use std::io::{IsTerminal, Read};
    let mut text = zeroize::Zeroizing::new(String::new());
    if std::io::stdin().is_terminal() {
        eprint!("key (input hidden): ");
        *text = rpassword::read_password()
            .map_err(|e| Failure::usage(format!("cannot read the key: {e}")))?;
    } else {
        std::io::stdin()
            .take(64 * 1024 + 1)
            .read_to_string(&mut text)
            .map_err(|e| Failure::usage(format!("cannot read the key from stdin: {e}")))?;
    }
    let trimmed = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(trimmed);
    if text.trim().is_empty() {
        return Err(Failure::usage("--secret-stdin: standard input held no key"));
    }
    Ok(text)
}

fn print_rotation(r: &Rotation) {
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("{} {} ({})", r.credential, r.state, r.id);
    println!(
        "  old  {} …{} version {}",
        o(&r.old_fingerprint),
        o(&r.old_last4),
        o(&r.old_version)
    );
    println!(
        "  new  {} …{} version {}",
        o(&r.new_fingerprint),
        o(&r.new_last4),
        o(&r.new_version)
    );
    println!(
        "  staged {}  tested {}  promoted {}",
        at_ms(Some(r.started_at)),
        at_ms(r.tested_at),
        at_ms(r.promoted_at)
    );
    if let Some(why) = &r.reason {
        println!("  {why}");
    }
}

/// A time given as RFC 3339, unix milliseconds (13 digits or more) or a duration ago (`30d`),
/// in unix milliseconds.
pub(crate) fn time_arg(t: &str) -> Result<i64, Failure> {
    if t.len() >= 13 && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map_err(|_| Failure::usage(format!("`{t}` is not a time")));
    }
    if let Ok(ts) = humantime::parse_rfc3339_weak(t) {
        return Ok(ts
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0));
    }
    let ago = humantime::parse_duration(t).map_err(|_| {
        Failure::usage(format!(
            "`{t}` is neither a time (2026-11-01T00:00:00Z) nor a duration ago (30d)"
        ))
    })?;
    let now = std::time::SystemTime::now();
    Ok((now - ago)
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// `credential rotate --all`: every credential (of `env`, not rotated since `since`), `parallel`
/// at a time, progress on stderr, then a table (or JSON) of what was rotated, what failed and
/// why, and what waits for its old key to be revoked at the provider.
async fn rotate_all(
    admin: &Admin,
    env: Option<String>,
    since: Option<String>,
    parallel: usize,
    json: bool,
) -> Result<(), Failure> {
    use futures_util::StreamExt;
    use std::io::IsTerminal;
    let since = since.as_deref().map(time_arg).transpose()?;
    let list: Credentials = admin
        .typed(Method::GET, "/credentials", None::<&()>)
        .await?;
    let creds: Vec<Credential> = list
        .credentials
        .into_iter()
        .filter(|c| env.as_deref().is_none_or(|e| c.env == e))
        .filter(|c| since.is_none_or(|t| c.rotated_at.unwrap_or(c.created_at) < t))
        .collect();
    let total = creds.len();
    let tty = std::io::stderr().is_terminal() && !json;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Value> = futures_util::stream::iter(creds.into_iter().map(|c| {
        let done = &done;
        async move {
            let name = c.name;
            let out = if c.secret_ref.starts_with("sealed:") {
                json!({"credential": name, "state": "skipped",
                       "reason": "sealed: rotate it on its own with --new-secret-stdin"})
            } else {
                match admin
                    .call_coded(
                        Method::POST,
                        &format!("/credentials/{name}/rotate"),
                        Some(json!({})),
                    )
                    .await
                {
                    Ok(v) => v,
                    Err((f, Some(code))) if code == "nothing_to_rotate" => {
                        json!({"credential": name, "state": "unchanged", "reason": f.message})
                    }
                    Err((f, _)) => {
                        json!({"credential": name, "state": "failed", "reason": f.message})
                    }
                }
            };
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if tty {
                eprint!("\rrotating: {n}/{total} done");
            }
            out
        }
    }))
    .buffer_unordered(parallel.max(1))
    .collect()
    .await;
    if tty {
        eprintln!();
    }
    let failed = results.iter().filter(|r| r["state"] == "failed").count();
    if json {
        print_json(&json!({ "rotations": results, "failed": failed }));
    } else {
        println!("{:<24} {:<10} NEXT STEP / WHY", "CREDENTIAL", "STATE");
        for r in &results {
            let next = match r["state"].as_str() {
                Some("promoted") => {
                    "revoke the old key at the provider, then: credential verify --old".to_string()
                }
                _ => r["reason"].as_str().unwrap_or("").to_string(),
            };
            println!("{:<24} {:<10} {}", s(r, "credential"), s(r, "state"), next);
        }
    }
    if failed > 0 {
        return Err(Failure {
            code: 1,
            message: format!("{failed} of {total} rotations failed"),
        });
    }
    Ok(())
}

/// `airlock run … -- CMD`: the command gets a token, never a provider key or the admin key.
/// One call to a public (non-admin) endpoint; the answer's JSON, or a failure carrying the
/// server's message (OAuth `error_description` or the API's `error.message`).
async fn public_call(
    client: &airlock_gateway::util::HttpClient,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<Value, Failure> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let req = b
        .body(Full::new(body))
        .map_err(|e| Failure::usage(format!("bad address {uri}: {e}")))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| Failure::remote(format!("{uri} did not answer within 30s")))?
        .map_err(|_| Failure::remote(format!("cannot reach {uri}")))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::remote(format!("reading the answer failed: {e}")))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(v);
    }
    let msg = v
        .pointer("/error/message")
        .or_else(|| v.get("error_description"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let code = v
        .get("error")
        .and_then(Value::as_str)
        .map(|c| format!("{c}: "))
        .unwrap_or_default();
    Err(Failure {
        code: if status.is_server_error() { 3 } else { 2 },
        message: format!("{code}{msg}"),
    })
}

/// Where `airlock run` gets its token.
enum TokenSource {
    /// An identity token read from a file, exchanged.
    File(std::path::PathBuf),
    /// GitHub Actions' identity token, requested and exchanged.
    Github {
        url: String,
        bearer: zeroize::Zeroizing<String>,
    },
    /// A service-account key.
    ServiceAccount(zeroize::Zeroizing<String>),
    /// An admin key.
    Admin,
}

fn token_source(r: &RunArgs) -> Result<TokenSource, Failure> {
    let var = |k: &str| crate::setting(k).filter(|v| !v.trim().is_empty());
    if let Some(f) = &r.oidc_token_file {
        return Ok(TokenSource::File(f.clone()));
    }
    if let (Some(url), Some(bearer)) = (
        var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    ) {
        return Ok(TokenSource::Github {
            url,
            bearer: zeroize::Zeroizing::new(bearer),
        });
    }
    if let Some(k) = var("AIRLOCK_SERVICE_ACCOUNT_KEY") {
        return Ok(TokenSource::ServiceAccount(zeroize::Zeroizing::new(k)));
    }
    if var("AIRLOCK_ADMIN_TOKEN").is_some() {
        return Ok(TokenSource::Admin);
    }
    Err(Failure::usage(
        "no identity to get a token with: pass --oidc-token-file, run in GitHub Actions with `permissions: id-token: write`, or set AIRLOCK_SERVICE_ACCOUNT_KEY or AIRLOCK_ADMIN_TOKEN",
    ))
}

/// `airlock run`: a token for the command, revoked when it ends.
pub async fn run_with_token(r: RunArgs) -> Result<(), Failure> {
    // This process may hold an admin key, a service-account key or the platform's token
    // request credential: a command of the same user could read them from
    // /proc/PID/environ or attach to it. Not dumpable closes both.
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        return Err(Failure::usage(format!(
            "cannot protect the keys from the command ({e}); not running it"
        )));
    }
    let source = token_source(&r)?;
    let url = crate::setting("AIRLOCK_URL")
        .unwrap_or_else(|| "http://127.0.0.1:8400".into())
        .trim_end_matches('/')
        .to_string();
    if url.starts_with("http://")
        && !["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| url.starts_with(p))
    {
        eprintln!("airlock: warning: {url} is plain HTTP; the token crosses the network in clear");
    }
    if r.subject.is_some() && !matches!(source, TokenSource::Admin) {
        return Err(Failure::usage(
            "--subject is for admin keys; a workload's token is named after its identity",
        ));
    }
    let client = airlock_gateway::util::http_client(Duration::from_secs(5))
        .map_err(|e| Failure::usage(e.to_string()))?;
    let program = r.cmd[0].clone();
    // Unasked, a bounded identity gets its scope's default (at most its maximum); an admin
    // key 15 minutes.
    let ttl = r.ttl.clone();
    let exchange = |jwt: zeroize::Zeroizing<String>| {
        let mut scope: Vec<String> = Vec::new();
        scope.extend(r.scope.models.iter().map(|m| format!("model:{m}")));
        scope.extend(
            r.scope
                .credentials
                .iter()
                .map(|c| format!("credential:{c}")),
        );
        scope.extend(r.scope.env.iter().map(|e| format!("env:{e}")));
        scope.extend(r.scope.project.iter().map(|p| format!("project:{p}")));
        let mut form = vec![
            ("grant_type", airlock_gateway::oidc::GRANT_TYPE.to_string()),
            ("subject_token", jwt.to_string()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:jwt".to_string(),
            ),
        ];
        if let Some(t) = &ttl {
            form.push(("ttl", t.clone()));
        }
        if !scope.is_empty() {
            form.push(("scope", scope.join(" ")));
        }
        if let Some(p) = &r.policy {
            form.push(("audience", p.clone()));
        }
        let body = zeroize::Zeroizing::new(serde_urlencoded::to_string(&form).unwrap_or_default());
        let client = &client;
        let uri = format!("{url}/v1/token/exchange");
        async move {
            let v = public_call(
                client,
                Method::POST,
                &uri,
                None,
                Some("application/x-www-form-urlencoded"),
                Bytes::from(body.as_bytes().to_vec()),
            )
            .await?;
            Ok::<_, Failure>((
                s(&v, "access_token").to_string(),
                s(&v, "token_id").to_string(),
            ))
        }
    };
    let (token, id) = match &source {
        TokenSource::File(path) => {
            let jwt = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
                    .trim()
                    .to_string(),
            );
            exchange(jwt).await?
        }
        TokenSource::Github { url: req, bearer } => {
            let sep = if req.contains('?') { '&' } else { '?' };
            let aud: String =
                serde_urlencoded::to_string([("audience", &r.oidc_audience)]).unwrap_or_default();
            let v = public_call(
                &client,
                Method::GET,
                &format!("{req}{sep}{aud}"),
                Some(bearer),
                None,
                Bytes::new(),
            )
            .await
            .map_err(|f| Failure {
                code: f.code,
                message: format!(
                    "cannot get the GitHub Actions identity token: {}",
                    f.message
                ),
            })?;
            let jwt = zeroize::Zeroizing::new(s(&v, "value").to_string());
            exchange(jwt).await?
        }
        TokenSource::ServiceAccount(key) => {
            let body = json!({"models": r.scope.models, "credentials": r.scope.credentials, "env": r.scope.env, "ttl": ttl, "project": r.scope.project});
            let v = public_call(
                &client,
                Method::POST,
                &format!("{url}/v1/token"),
                Some(key),
                Some("application/json"),
                Bytes::from(body.to_string()),
            )
            .await?;
            (s(&v, "token").to_string(), s(&v, "id").to_string())
        }
        TokenSource::Admin => {
            let admin = Admin::from_env()?;
            let subject = r.subject.clone().unwrap_or_else(|| {
                let base = std::path::Path::new(&program)
                    .file_name()
                    .map(|b| b.to_string_lossy().to_string())
                    .unwrap_or_else(|| program.clone());
                format!("run:{base}")
            });
            let v = admin
                .call(
                    Method::POST,
                    "/tokens",
                                        Some(json!({"models": r.scope.models, "credentials": r.scope.credentials, "env": r.scope.env, "ttl": ttl.clone().unwrap_or_else(|| "15m".into()), "subject": subject, "project": r.scope.project})),
                )
                .await?;
            (s(&v, "token").to_string(), s(&v, "id").to_string())
        }
    };
    if !token.starts_with(airlock_token::TOKEN_PREFIX) {
        return Err(Failure::remote("the server's answer held no token"));
    }
    let token = zeroize::Zeroizing::new(token);
    let status = run_child(&program, &r.cmd[1..], &url, &token).await;
    // Whatever happened to the command, its token is revoked (by the token itself, so this
    // works for every way of getting one).
    if let Err(f) = public_call(
        &client,
        Method::POST,
        &format!("{url}/v1/token/revoke"),
        Some(&token),
        None,
        Bytes::new(),
    )
    .await
    {
        eprintln!(
            "airlock: could not revoke token {id} after the command: {}",
            f.message
        );
    }
    drop(token);
    let status = status?;
    let code = status.code().unwrap_or_else(|| {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }
        #[cfg(not(unix))]
        {
            1
        }
    });
    if code == 0 {
        Ok(())
    } else {
        Err(Failure {
            code: u8::try_from(code).unwrap_or(1),
            message: String::new(),
        })
    }
}

/// `airlock service-account create|list|revoke`.
pub async fn service_account(c: ServiceAccountCmd, json: bool) -> Result<(), Failure> {
    let admin = Admin::from_env()?;
    let v = match c {
        ServiceAccountCmd::Create {
            name,
            env,
            models,
            credentials,
            max_ttl,
            project,
        } => {
            let v = admin
                .post(
                    "/service-accounts",
                    json!({"name": name, "env": env, "models": models, "credentials": credentials, "max_ttl": max_ttl, "project": project}),
                )
                .await?;
            if !json {
                for w in v["warnings"].as_array().cloned().unwrap_or_default() {
                    eprintln!("warning: {}", w.as_str().unwrap_or_default());
                }
                eprintln!(
                    "service account {} ({}); its key, shown once:",
                    s(&v, "name"),
                    s(&v, "id")
                );
                println!("{}", s(&v, "key"));
                return Ok(());
            }
            v
        }
        ServiceAccountCmd::List => {
            let list: airlock_api::access::ServiceAccounts = admin
                .typed(Method::GET, "/service-accounts", None::<&()>)
                .await?;
            if json {
                print_typed(&list);
                return Ok(());
            }
            let mut t = table(&["ID", "NAME", "SCOPE", "LAST USED", "REVOKED"], &[]);
            for a in &list.service_accounts {
                t.add_row([
                    a.id.clone(),
                    a.name.clone(),
                    a.scope
                        .as_ref()
                        .map_or_else(|| "(unreadable)".to_string(), scope_text),
                    at_ms(a.last_used_at),
                    at_ms(a.revoked_at),
                ]);
            }
            println!("{t}");
            return Ok(());
        }
        ServiceAccountCmd::Revoke { id } => {
            let r: airlock_api::access::KeyRevoked = admin
                .typed(
                    Method::POST,
                    &format!("/service-accounts/{id}/revoke"),
                    Some(&json!({})),
                )
                .await?;
            if json {
                print_typed(&r);
            } else {
                println!("revoked service account {}", r.revoked);
            }
            return Ok(());
        }
    };
    print_json(&v);
    Ok(())
}

/// `prod: gpt-* via any credential, ≤ 30m`.
fn scope_text(sc: &airlock_api::access::Scope) -> String {
    format!(
        "{}: {} via {}, ≤ {}",
        sc.env,
        if sc.models.is_empty() {
            "*".to_string()
        } else {
            sc.models.join(",")
        },
        if sc.credentials.is_empty() {
            "any credential".to_string()
        } else {
            sc.credentials.join(",")
        },
        humantime::format_duration(Duration::from_secs(sc.max_ttl_secs))
    )
}

/// A unix-milliseconds time as RFC 3339, or `-`.
fn at_ms(t: Option<i64>) -> String {
    t.map_or_else(|| "-".to_string(), |m| ms(&Value::from(m)))
}

/// A table with a header row and no borders, as the CLI prints lists; the columns named in
/// `numeric` are aligned right.
fn table(header: &[&str], numeric: &[usize]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_header(header.iter().map(|h| comfy_table::Cell::new(*h)));
    for i in numeric {
        if let Some(c) = t.column_mut(*i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    t
}

/// Prints a typed answer as JSON.
fn print_typed(v: &impl serde::Serialize) {
    print_json(&serde_json::to_value(v).unwrap_or_default());
}

/// `airlock budget set|list|remove`.
pub async fn budget(c: crate::BudgetCmd, json: bool) -> Result<(), Failure> {
    use airlock_api::limits::{Budget, Budgets, NewBudget};
    let admin = Admin::from_env()?;
    match c {
        crate::BudgetCmd::Set {
            target,
            usd,
            period,
        } => {
            let (kind, key) = target.kind_key()?;
            let new = NewBudget {
                kind: kind.to_string(),
                key: key.to_string(),
                period: period.to_string(),
                usd,
            };
            let b: Budget = admin.typed(Method::POST, "/budgets", Some(&new)).await?;
            if json {
                print_typed(&b);
            } else {
                println!(
                    "budget {}: {} {} at most {} USD per {} (spent {} USD)",
                    b.id,
                    b.kind,
                    b.key,
                    b.limit_usd,
                    b.period,
                    b.spent_usd.as_deref().unwrap_or("-")
                );
            }
        }
        crate::BudgetCmd::List => {
            let list: Budgets = admin.typed(Method::GET, "/budgets", None::<&()>).await?;
            if json {
                print_typed(&list);
            } else {
                let mut t = table(
                    &["ID", "KIND", "KEY", "PERIOD", "LIMIT USD", "SPENT USD"],
                    &[4, 5],
                );
                for b in &list.budgets {
                    t.add_row([
                        b.id.as_str(),
                        &b.kind,
                        &b.key,
                        &b.period,
                        &b.limit_usd,
                        b.spent_usd.as_deref().unwrap_or("-"),
                    ]);
                }
                println!("{t}");
            }
        }
        crate::BudgetCmd::Remove { id } => {
            let r: airlock_api::Removed = admin
                .typed(Method::DELETE, &format!("/budgets/{id}"), None::<&()>)
                .await?;
            if json {
                print_typed(&r);
            } else {
                println!("removed budget {}", r.id);
            }
        }
    }
    Ok(())
}

/// A per-minute figure, or `-` when unlimited.
fn per_min(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// `airlock rate-limit set|list|remove`.
pub async fn rate_limit(c: crate::RateLimitCmd, json: bool) -> Result<(), Failure> {
    use airlock_api::limits::{NewRateLimit, RateLimit, RateLimits};
    let admin = Admin::from_env()?;
    match c {
        crate::RateLimitCmd::Set { target, rpm, tpm } => {
            let (kind, key) = target.kind_key()?;
            let new = NewRateLimit {
                kind: kind.to_string(),
                key: key.to_string(),
                rpm,
                tpm,
            };
            let l: RateLimit = admin
                .typed(Method::POST, "/rate-limits", Some(&new))
                .await?;
            if json {
                print_typed(&l);
            } else {
                println!(
                    "rate limit {}: {} {} at {} requests and {} tokens per minute",
                    l.id,
                    l.kind,
                    l.key,
                    per_min(l.rpm),
                    per_min(l.tpm)
                );
            }
        }
        crate::RateLimitCmd::List => {
            let list: RateLimits = admin
                .typed(Method::GET, "/rate-limits", None::<&()>)
                .await?;
            if json {
                print_typed(&list);
            } else {
                let mut t = table(&["ID", "KIND", "KEY", "RPM", "TPM"], &[3, 4]);
                for l in &list.rate_limits {
                    t.add_row([
                        l.id.clone(),
                        l.kind.clone(),
                        l.key.clone(),
                        per_min(l.rpm),
                        per_min(l.tpm),
                    ]);
                }
                println!("{t}");
            }
        }
        crate::RateLimitCmd::Remove { id } => {
            let r: airlock_api::Removed = admin
                .typed(Method::DELETE, &format!("/rate-limits/{id}"), None::<&()>)
                .await?;
            if json {
                print_typed(&r);
            } else {
                println!("removed rate limit {}", r.id);
            }
        }
    }
    Ok(())
}

/// `airlock usage`.
pub async fn usage(
    by: &str,
    since: &str,
    until: Option<&str>,
    bucket: &str,
    json: bool,
) -> Result<(), Failure> {
    let admin = Admin::from_env()?;
    let mut q: Vec<(&str, String)> = vec![
        ("by", by.to_string()),
        ("since", time_arg(since)?.to_string()),
        ("bucket", bucket.to_string()),
    ];
    if let Some(u) = until {
        q.push(("until", time_arg(u)?.to_string()));
    }
    let qs = serde_urlencoded::to_string(&q).unwrap_or_default();
    let v = admin.get(&format!("/usage?{qs}")).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let bucketed = rows.iter().any(|r| r.get("bucket").is_some());
    if bucketed {
        print!("{:<22} ", "BUCKET");
    }
    println!(
        "{:<40} {:>9} {:>12} {:>12} {:>16}",
        by.to_uppercase(),
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "COST USD"
    );
    let (mut n, mut i, mut o, mut c, mut unpriced) = (0i64, 0i64, 0i64, 0i64, 0i64);
    for r in &rows {
        if bucketed {
            print!("{:<22} ", s(r, "bucket"));
        }
        let get = |k: &str| r[k].as_i64().unwrap_or(0);
        println!(
            "{:<40} {:>9} {:>12} {:>12} {:>16}",
            r[by].as_str().unwrap_or("-"),
            get("requests"),
            get("input_tokens"),
            get("output_tokens"),
            s(r, "cost_usd")
        );
        n += get("requests");
        i += get("input_tokens");
        o += get("output_tokens");
        c += get("cost_nanos");
        unpriced += get("unpriced_requests");
    }
    if bucketed {
        print!("{:<22} ", "");
    }
    println!(
        "{:<40} {:>9} {:>12} {:>12} {:>16}",
        "TOTAL",
        n,
        i,
        o,
        format!("{}.{:09}", c / 1_000_000_000, c % 1_000_000_000)
    );
    if unpriced > 0 {
        eprintln!("note: {unpriced} requests used models without a price; add them under [pricing] in airlock.toml");
    }
    Ok(())
}

/// `airlock trust add|list|remove`.
pub async fn trust(c: TrustCmd, json: bool) -> Result<(), Failure> {
    use airlock_api::trust::{Listed, PolicyRemoved, TrustPolicies};
    let admin = Admin::from_env()?;
    match c {
        TrustCmd::Add { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
            let policy: Value = if text.trim_start().starts_with('{') {
                serde_json::from_str(&text)
                    .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?
            } else {
                let t: toml::Value = toml::from_str(&text)
                    .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
                // A file may hold the policy itself or one [[trust]] table.
                let t = match t.get("trust").and_then(|a| a.as_array()) {
                    Some(a) if a.len() == 1 => a[0].clone(),
                    Some(_) => {
                        return Err(Failure::usage(format!(
                            "{}: put one policy per file",
                            file.display()
                        )))
                    }
                    None => t,
                };
                serde_json::to_value(t).map_err(|e| Failure::usage(e.to_string()))?
            };
            // Sent as written: the server checks it and says what is wrong.
            let added: Listed = admin
                .typed(Method::POST, "/trust-policies", Some(&policy))
                .await?;
            if !json {
                let p = &added.policy;
                println!(
                    "trust policy {} added: tokens from {} with audience {} get {}",
                    p.name,
                    p.issuer,
                    p.audience,
                    serde_json::to_value(&p.grant).unwrap_or_default()
                );
                return Ok(());
            }
            print_typed(&added);
        }
        TrustCmd::List => {
            let list: TrustPolicies = admin
                .typed(Method::GET, "/trust-policies", None::<&()>)
                .await?;
            if !json {
                let mut t = table(&["NAME", "SOURCE", "ISSUER", "AUDIENCE", "GRANT"], &[]);
                for l in &list.trust_policies {
                    let (p, g) = (&l.policy, &l.policy.grant);
                    t.add_row(vec![
                        p.name.clone(),
                        l.source.clone(),
                        p.issuer.clone(),
                        p.audience.clone(),
                        format!(
                            "{}: {} (≤ {})",
                            g.env,
                            if g.models.is_empty() {
                                "*".to_string()
                            } else {
                                g.models.join(",")
                            },
                            g.max_ttl
                        ),
                    ]);
                }
                println!("{t}");
                return Ok(());
            }
            print_typed(&list);
        }
        TrustCmd::Remove { name } => {
            let r: PolicyRemoved = admin
                .typed(
                    Method::DELETE,
                    &format!("/trust-policies/{name}"),
                    None::<&()>,
                )
                .await?;
            if !json {
                println!(
                    "removed trust policy {} ({} tokens it granted revoked)",
                    r.name, r.tokens_revoked
                );
                return Ok(());
            }
            print_typed(&r);
        }
    }
    Ok(())
}

/// Runs the command with the token; SIGINT, SIGTERM and SIGHUP sent to airlock are passed on
/// to it (and waited for), so the token is revoked after it however the run ends.
async fn run_child(
    program: &str,
    args: &[String],
    url: &str,
    token: &str,
) -> Result<std::process::ExitStatus, Failure> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .env("OPENAI_API_KEY", token)
        .env("ANTHROPIC_BASE_URL", url)
        .env("ANTHROPIC_API_KEY", token)
        // The command holds a token and nothing more.
        .env_remove("AIRLOCK_ADMIN_TOKEN")
        .env_remove("AIRLOCK_SERVICE_ACCOUNT_KEY")
        // The platform's credential to request identity tokens: with it the command could get
        // a token of the policy's full scope (not this run's narrower one) that outlives it.
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .env_remove("OPENAI_ORG_ID")
        .env_remove("OPENAI_PROJECT_ID");
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::usage(format!("cannot run {program}: {e}")))?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        loop {
            let sig = tokio::select! {
                s = child.wait() => {
                    return s.map_err(|e| Failure::usage(format!("{program}: {e}")));
                }
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => rustix::process::Signal::TERM,
                _ = async { match hup.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => rustix::process::Signal::HUP,
                _ = async { match int.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => rustix::process::Signal::INT,
            };
            if let Some(pid) = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    }
    #[cfg(not(unix))]
    child
        .wait()
        .await
        .map_err(|e| Failure::usage(format!("{program}: {e}")))
}

/// `airlock admin-key create|list|revoke`.
pub async fn admin_key(c: AdminKeyCmd, json: bool) -> Result<(), Failure> {
    let admin = Admin::from_env()?;
    let v = match c {
        AdminKeyCmd::Create {
            name,
            role,
            env,
            models,
            credentials,
            max_ttl,
        } => {
            let mut body = json!({"name": name, "role": role});
            if env.is_some() || !models.is_empty() || !credentials.is_empty() || max_ttl.is_some() {
                body["env"] = json!(env);
                body["models"] = json!(models);
                body["credentials"] = json!(credentials);
                body["max_ttl"] = json!(max_ttl);
            }
            let v = admin.call(Method::POST, "/admin-keys", Some(body)).await?;
            if !json {
                eprintln!(
                    "admin key {} ({}) for {}; shown once:",
                    s(&v, "id"),
                    s(&v, "role"),
                    s(&v, "name")
                );
                println!("{}", s(&v, "key"));
                return Ok(());
            }
            v
        }
        AdminKeyCmd::List => {
            let list: airlock_api::access::AdminKeys =
                admin.typed(Method::GET, "/admin-keys", None::<&()>).await?;
            if json {
                print_typed(&list);
                return Ok(());
            }
            let mut t = table(&["ID", "NAME", "ROLE", "CREATED", "REVOKED", "GRANT"], &[]);
            for k in &list.admin_keys {
                t.add_row([
                    k.id.clone(),
                    k.name.clone(),
                    k.role.clone(),
                    at_ms(Some(k.created_at)),
                    at_ms(k.revoked_at),
                    match (&k.grant, k.grant_unreadable) {
                        (_, true) => "(unreadable)".to_string(),
                        (Some(g), _) => scope_text(g),
                        (None, _) => "-".to_string(),
                    },
                ]);
            }
            println!("{t}");
            return Ok(());
        }
        AdminKeyCmd::Revoke { id } => {
            let r: airlock_api::access::KeyRevoked = admin
                .typed(
                    Method::POST,
                    &format!("/admin-keys/{id}/revoke"),
                    None::<&()>,
                )
                .await?;
            if json {
                print_typed(&r);
            } else {
                println!("revoked {}", r.revoked);
            }
            return Ok(());
        }
    };
    print_json(&v);
    Ok(())
}

/// `airlock incident lockdown|report`.
pub async fn incident(c: IncidentCmd, json: bool) -> Result<(), Failure> {
    use airlock_api::incident::{Lockdown, LockdownRequest, Report};
    let admin = Admin::from_env()?;
    match c {
        IncidentCmd::Lockdown { suspend, reason } => {
            let l: Lockdown = admin
                .typed(
                    Method::POST,
                    "/incident/lockdown",
                    Some(&LockdownRequest { suspend, reason }),
                )
                .await?;
            if json {
                print_typed(&l);
            } else {
                println!("lockdown: {}", l.tokens_refused);
                println!(
                    "  new tokens are signed by root key {} ({})",
                    l.root_key_id, l.public_key
                );
                println!(
                    "  suspended: {}",
                    if l.suspended.is_empty() {
                        "-".to_string()
                    } else {
                        l.suspended.join(",")
                    }
                );
                println!("  mint fresh tokens for legitimate clients now: airlock token mint …");
            }
        }
        IncidentCmd::Report { since, until } => {
            let since = time_arg(&since)?;
            let mut path = format!("/incident/report?since={since}");
            if let Some(u) = until {
                path.push_str(&format!("&until={}", time_arg(&u)?));
            }
            let r: Report = admin.typed(Method::GET, &path, None::<&()>).await?;
            if json {
                print_typed(&r);
                return Ok(());
            }
            println!("blast radius since {}", at_ms(Some(r.since)));
            for c in &r.credentials {
                let ratio = c
                    .requests_vs_baseline
                    .map(|x| format!("{x:.1}x its baseline"))
                    .unwrap_or_else(|| "no baseline".into());
                println!(
                    "\n{} ({} / {}): {} requests ({ratio}), ${:.4}; rotation: {}",
                    c.credential,
                    c.provider,
                    c.env,
                    c.requests,
                    c.cost_micros as f64 / 1e6,
                    c.rotation.state
                );
                let first = |seen: bool| if seen { "  FIRST SEEN" } else { "" };
                for x in &c.identities {
                    println!(
                        "  {:<10} {:<32} {:>6} requests{}",
                        "identity",
                        x.subject,
                        x.requests,
                        first(x.first_seen)
                    );
                }
                for x in &c.client_ips {
                    println!(
                        "  {:<10} {:<32} {:>6} requests{}",
                        "address",
                        x.ip,
                        x.requests,
                        first(x.first_seen)
                    );
                }
                for t in &c.tokens {
                    println!(
                        "  token      {:<32} {:>6} requests ({})",
                        t.token_id, t.requests, t.subject
                    );
                }
                for m in &c.models {
                    println!("  model      {:<32} {:>6} requests", m.model, m.requests);
                }
            }
        }
    }
    Ok(())
}

/// `airlock kek rotate`.
pub async fn kek_rotate(json: bool) -> Result<(), Failure> {
    let admin = Admin::from_env()?;
    // A partial rewrap is answered 207 with the same body.
    let v: KekRotation = admin
        .typed(Method::POST, "/kek/rotate", Some(&json!({})))
        .await?;
    let failed = &v.failed;
    if json {
        print_typed(&v);
    } else {
        println!(
            "rewrapped {} sealed secret(s) under {} (version {})",
            v.rewrapped, v.kek, v.version
        );
        for (id, why) in failed {
            eprintln!("  not rewrapped: {id} ({why})");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: format!("{} sealed secret(s) were not rewrapped", failed.len()),
        })
    }
}

/// `airlock doctor`.
pub async fn doctor(json: bool) -> Result<(), Failure> {
    let admin = Admin::from_env()?;
    let v: Doctor = admin
        .typed(Method::POST, "/doctor", Some(&json!({})))
        .await?;
    if json {
        print_typed(&v);
    } else {
        for c in &v.checks {
            println!(
                "{} {:<32} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
    }
    if v.ok {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: "some checks failed".into(),
        })
    }
}

fn ms(v: &Value) -> String {
    v.as_i64()
        .map(|m| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(m as u64),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn list(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "*".into())
}

pub async fn credential(c: CredentialCmd, json: bool) -> Result<(), Failure> {
    let admin = Admin::from_env()?;
    match c {
        CredentialCmd::Add {
            name,
            provider,
            env,
            secret,
            secret_stdin,
            base_url,
            models,
            priority,
        } => {
            let mut body = NewCredential {
                name,
                provider,
                env,
                base_url,
                models,
                priority: Some(priority),
                ..Default::default()
            };
            // The key travels in the body of this one call (as it did as JSON before): the
            // typed body wipes its copy; the request's buffer is freed after the send.
            if secret_stdin {
                body.secret_value = Some(SecretValue::new(read_secret_stdin()?.to_string()));
            } else {
                body.secret_ref = secret;
            }
            let c: Credential = admin
                .typed(Method::POST, "/credentials", Some(&body))
                .await?;
            drop(body);
            if json {
                print_typed(&c);
            } else {
                println!(
                    "added {} ({} / {}) fingerprint {} …{}",
                    c.name,
                    c.provider,
                    c.env,
                    c.fingerprint.as_deref().unwrap_or("-"),
                    c.last4.as_deref().unwrap_or("-")
                );
            }
        }
        CredentialCmd::Verify { name, old: true } => {
            let v = admin
                .call(
                    Method::POST,
                    &format!("/credentials/{name}/verify"),
                    Some(json!({"old": true})),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{name}: old key {} …{}: {} ({})",
                    v["old"]["fingerprint"].as_str().unwrap_or("-"),
                    v["old"]["last4"].as_str().unwrap_or(""),
                    s(&v, "status"),
                    s(&v, "detail")
                );
                println!(
                    "  uses of the old key after the promotion (+{}s grace): {}",
                    v["grace_secs"], v["uses_after_promotion"]
                );
                println!(
                    "  {}",
                    if v["confirmed"] == true {
                        "confirmed: rotated, old key dead"
                    } else {
                        "not confirmed yet: revoke the old key at the provider, then run this again"
                    }
                );
            }
            return if v["confirmed"] == true {
                Ok(())
            } else {
                Err(Failure {
                    code: 1,
                    message: format!("credential {name}: the old key is not confirmed dead"),
                })
            };
        }
        CredentialCmd::Rotate {
            name,
            new_secret_stdin,
            from_store: _,
            all,
            env,
            since,
            parallel,
        } => {
            if all {
                return rotate_all(&admin, env, since, parallel, json).await;
            }
            let name = name.unwrap_or_default();
            let body = if new_secret_stdin {
                let value = read_secret_stdin()?;
                json!({"secret_value": value.to_string()})
            } else {
                json!({})
            };
            let r: Rotation = admin
                .typed(
                    Method::POST,
                    &format!("/credentials/{name}/rotate"),
                    Some(&body),
                )
                .await?;
            if json {
                print_typed(&r);
            } else {
                print_rotation(&r);
            }
            return if r.state == "promoted" {
                Ok(())
            } else {
                Err(Failure {
                    code: 1,
                    message: format!(
                        "credential {name}: the rotation failed: {}",
                        r.reason.as_deref().unwrap_or("-")
                    ),
                })
            };
        }
        CredentialCmd::Verify { name, old: false } => {
            let v: Verification = admin
                .typed(
                    Method::POST,
                    &format!("/credentials/{name}/verify"),
                    Some(&json!({})),
                )
                .await?;
            if json {
                print_typed(&v);
            } else {
                println!("{} {}: {}", name, v.status, v.detail);
                println!("  store        {} ({})", v.store, v.reference);
                if let Some(ver) = &v.version {
                    println!("  version      {ver}");
                }
                if let Some(fp) = &v.fingerprint {
                    println!("  fingerprint  {fp} …{}", v.last4.as_deref().unwrap_or("-"));
                }
            }
            return match v.status.as_str() {
                "ok" => Ok(()),
                "unreachable" => Err(Failure {
                    code: 3,
                    message: format!("credential {name}: the provider could not be reached"),
                }),
                other => Err(Failure {
                    code: 1,
                    message: format!("credential {name}: {other}"),
                }),
            };
        }
        CredentialCmd::List => {
            let list: Credentials = admin
                .typed(Method::GET, "/credentials", None::<&()>)
                .await?;
            if json {
                print_typed(&list);
                return Ok(());
            }
            let mut t = table(
                &[
                    "NAME",
                    "PROVIDER",
                    "ENV",
                    "PRIO",
                    "FINGERPRINT",
                    "LAST4",
                    "LAST USED",
                    "REFERENCE",
                ],
                &[3],
            );
            for c in &list.credentials {
                t.add_row(vec![
                    c.name.clone(),
                    c.provider.clone(),
                    c.env.clone(),
                    c.priority.to_string(),
                    c.fingerprint
                        .as_deref()
                        .unwrap_or("-")
                        .chars()
                        .take(28)
                        .collect::<String>(),
                    c.last4.clone().unwrap_or_else(|| "-".into()),
                    at_ms(c.last_used_at),
                    c.secret_ref.clone(),
                ]);
            }
            println!("{t}");
        }
        CredentialCmd::Show { name, days } => {
            let d: CredentialDetail = admin
                .typed(
                    Method::GET,
                    &format!("/credentials/{name}?window_days={days}"),
                    None::<&()>,
                )
                .await?;
            if json {
                print_typed(&d);
                return Ok(());
            }
            let c = &d.credential;
            let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            println!("name         {}", c.name);
            println!("provider     {}", c.provider);
            println!("environment  {}", c.env);
            println!("reference    {}", c.secret_ref);
            println!(
                "base url     {}",
                c.base_url.as_deref().unwrap_or("(provider default)")
            );
            println!(
                "models       {}",
                if c.models.is_empty() {
                    "*".to_string()
                } else {
                    c.models.join(",")
                }
            );
            println!("priority     {}", c.priority);
            println!("fingerprint  {}", o(&c.fingerprint));
            if let Some(ver) = &c.secret_version {
                println!("version      {ver}");
            }
            println!("last 4       {}", o(&c.last4));
            println!("created      {}", at_ms(Some(c.created_at)));
            println!("rotated      {}", at_ms(c.rotated_at));
            let age = c.rotation.clone().unwrap_or(KeyAge {
                key_age_days: 0,
                max_age_days: 0,
                overdue: false,
                state: None,
            });
            println!("rotation     {}", o(&age.state));
            println!("last used    {}", at_ms(c.last_used_at));
            println!(
                "requests     {} ({} input / {} output tokens)",
                d.usage.requests, d.usage.input_tokens, d.usage.output_tokens
            );
            println!(
                "key age      {} days (policy {} days){}",
                age.key_age_days,
                age.max_age_days,
                if age.overdue {
                    "  OVERDUE: rotate it"
                } else {
                    ""
                }
            );
            let a = &d.activity;
            println!(
                "last {} days {} requests, {} / {} tokens, ${:.4}",
                a.window_days,
                a.requests,
                a.input_tokens,
                a.output_tokens,
                a.cost_micros as f64 / 1e6
            );
            for (label, counts) in [
                ("identities", &a.identities),
                ("tokens", &a.tokens),
                ("client ips", &a.client_ips),
            ] {
                let items: Vec<String> = counts
                    .iter()
                    .take(10)
                    .map(|c| format!("{} ({})", c.name, c.requests))
                    .collect();
                println!(
                    "  {label:<11}{}",
                    if items.is_empty() {
                        "-".to_string()
                    } else {
                        items.join(", ")
                    }
                );
            }
        }
        CredentialCmd::Suspend { name } => suspend(&admin, &name, true, json).await?,
        CredentialCmd::Resume { name } => suspend(&admin, &name, false, json).await?,
        CredentialCmd::Remove { name } => {
            let r: airlock_api::Removed = admin
                .typed(Method::DELETE, &format!("/credentials/{name}"), None::<&()>)
                .await?;
            if json {
                print_typed(&r);
            } else {
                println!("removed {}", r.removed);
            }
        }
    }
    Ok(())
}

async fn suspend(admin: &Admin, name: &str, on: bool, json: bool) -> Result<(), Failure> {
    let verb = if on { "suspend" } else { "resume" };
    let v: Suspension = admin
        .typed(
            Method::POST,
            &format!("/credentials/{name}/{verb}"),
            None::<&()>,
        )
        .await?;
    if json {
        print_typed(&v);
    } else if on {
        println!("suspended {name}: it serves nothing until `airlock credential resume {name}`");
    } else {
        println!("resumed {name}");
    }
    Ok(())
}

/// `airlock anomalies`: the `anomaly.detected` records of the audit log.
pub async fn anomalies(since: &str, limit: u32, json: bool) -> Result<(), Failure> {
    let admin = Admin::from_env()?;
    let q = serde_urlencoded::to_string([
        ("action", "anomaly.detected".to_string()),
        ("since", time_arg(since)?.to_string()),
        ("limit", limit.clamp(1, 10_000).to_string()),
        ("newest", "true".to_string()),
    ])
    .unwrap_or_default();
    let v = admin.get(&format!("/audit?{q}")).await?;
    let records = v["records"].as_array().cloned().unwrap_or_default();
    if json {
        print_json(&serde_json::Value::Array(records));
        return Ok(());
    }
    if records.is_empty() {
        println!("no anomalies since {since}");
        return Ok(());
    }
    for r in &records {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(r["ts"].as_u64().unwrap_or(0)),
        );
        println!(
            "{when}  {:<9}  {}  (request {}, from {})",
            s(r, "outcome"),
            s(r, "reason"),
            s(r, "request_id"),
            s(r, "client_ip"),
        );
    }
    Ok(())
}

pub async fn token(t: TokenCmd, json: bool) -> Result<(), Failure> {
    match t {
        TokenCmd::Attenuate {
            token,
            models,
            credentials,
            ttl,
        } => {
            let ttl = ttl
                .map(|t| {
                    humantime::parse_duration(&t)
                        .map_err(|e| Failure::usage(format!("--ttl {t}: {e}")))
                })
                .transpose()?;
            let now = std::time::SystemTime::now();
            let narrowed = airlock_token::attenuate(&token, &models, &credentials, ttl, now)
                .map_err(|e| Failure::usage(e.to_string()))?;
            if json {
                let info = airlock_token::inspect(&narrowed).ok();
                print_json(&json!({
                    "token": narrowed,
                    "blocks": info.as_ref().map(|i| i.blocks),
                    "expires_at": info.and_then(|i| i.expires_at).map(airlock_token::rfc3339),
                }));
            } else {
                println!("{narrowed}");
            }
            Ok(())
        }
        TokenCmd::Mint {
            scope:
                crate::TokenScope {
                    models,
                    credentials,
                    env,
                    project,
                },
            ttl,
            subject,
            budget_usd,
        } => {
            let admin = Admin::from_env()?;
            let mut body = json!({"models": models, "credentials": credentials, "env": env, "ttl": ttl, "subject": subject, "project": project});
            if let Some(b) = budget_usd {
                body["budget_usd"] = json!(b);
            }
            let v = admin.call(Method::POST, "/tokens", Some(body)).await?;
            if json {
                print_json(&v);
            } else {
                for w in v["warnings"].as_array().cloned().unwrap_or_default() {
                    eprintln!("warning: {}", w.as_str().unwrap_or_default());
                }
                eprintln!(
                    "token {} for {} (env {}, models {}) expires {}",
                    s(&v, "id"),
                    s(&v, "subject"),
                    s(&v, "env"),
                    list(&v, "models"),
                    s(&v, "expires_at")
                );
                println!("{}", s(&v, "token"));
            }
            Ok(())
        }
        TokenCmd::Revoke { id } => {
            let admin = Admin::from_env()?;
            let r: airlock_api::tokens::Revoked = admin
                .typed(Method::POST, &format!("/tokens/{id}/revoke"), None::<&()>)
                .await?;
            if json {
                print_typed(&r);
            } else {
                println!("revoked {}", r.revoked);
            }
            Ok(())
        }
        TokenCmd::List { all } => {
            let admin = Admin::from_env()?;
            let list: airlock_api::tokens::Tokens = admin
                .typed(Method::GET, &format!("/tokens?all={all}"), None::<&()>)
                .await?;
            if json {
                print_typed(&list);
                return Ok(());
            }
            let mut t = table(
                &["ID", "SUBJECT", "ENV", "MODELS", "EXPIRES", "REVOKED"],
                &[],
            );
            for tok in &list.tokens {
                t.add_row([
                    tok.id.clone(),
                    tok.subject.clone(),
                    tok.env.clone(),
                    if tok.models.is_empty() {
                        "*".to_string()
                    } else {
                        tok.models.join(",")
                    },
                    airlock_token::rfc3339(tok.expires_at.max(0) as u64),
                    tok.revoked_at
                        .map_or_else(|| "-".to_string(), |at| ms(&Value::from(at))),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}
