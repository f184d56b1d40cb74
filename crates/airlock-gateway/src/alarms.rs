//! What happens when the anomaly detector raises an alarm: it is audited, the credential is
//! suspended or the token revoked as `[anomaly]` says, and the alert is posted to the webhook,
//! signed. The detector itself (`airlock_spend::anomaly`) only observes and sends alarms here.

use crate::credentials::Credentials;
use crate::tokens::Tokens;
use crate::usage::Recorder;
use airlock_spend::anomaly::{Anomaly, Deliveries, Detector, History, SubjectKind};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// `[anomaly]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Watch at all.
    pub enabled: bool,
    /// Bucket length (`5m`, `1h`).
    pub bucket: String,
    /// Days of history in the baseline.
    pub baseline_days: u32,
    /// Modified z-score at or above which a bucket alarms.
    pub z_threshold: f64,
    /// A bucket with fewer requests never raises a rate alarm.
    pub min_requests: u64,
    /// A bucket that spent less never raises a spend alarm.
    pub min_spend_usd: f64,
    /// A credential or identity younger than this raises nothing (it has no baseline yet).
    pub learning_hours: f64,
    /// Prefix length of an IPv4 client range.
    pub ipv4_prefix: u8,
    /// Prefix length of an IPv6 client range.
    pub ipv6_prefix: u8,
    /// What to watch: `rate_spike`, `spend_spike`, `new_model`, `new_ip_range`,
    /// `new_country`, `new_hour` (default: all but `new_hour`; `new_country` only with
    /// `geoip`).
    pub watch: Option<Vec<String>>,
    /// Which kinds suspend the credential an alarm is about (until `airlock credential
    /// resume`). Any token allowed to use the credential can trip them.
    pub suspend_credential: Vec<String>,
    /// Which first-sight kinds revoke the token whose request raised the alarm.
    pub revoke_token: Vec<String>,
    /// A spike of one kind alarms at most once per this long per subject (`1h`).
    pub cooldown: String,
    /// A MaxMind GeoIP2 / GeoLite2 Country or City file, for `new_country`.
    pub geoip: Option<PathBuf>,
    /// Where alerts are POSTed (https, or http to this machine).
    pub webhook_url: Option<String>,
    /// Reference to the webhook's signing secret (`env:NAME`, `file:/path`, `vault://…`).
    pub webhook_secret: Option<String>,
    /// Delivery attempts per alert.
    pub webhook_attempts: u32,
    /// Timeout of one delivery attempt, seconds.
    pub webhook_timeout_secs: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            bucket: "5m".into(),
            baseline_days: 8,
            z_threshold: 3.5,
            min_requests: 20,
            min_spend_usd: 1.0,
            learning_hours: 24.0,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            watch: None,
            suspend_credential: Vec::new(),
            revoke_token: Vec::new(),
            cooldown: "1h".into(),
            geoip: None,
            webhook_url: None,
            webhook_secret: None,
            webhook_attempts: 5,
            webhook_timeout_secs: 5.0,
        }
    }
}

impl AnomalyConfig {
    /// The detector's settings, checked.
    pub fn settings(&self) -> Result<airlock_spend::anomaly::Settings, String> {
        use airlock_spend::anomaly::Kind;
        let bucket = humantime::parse_duration(&self.bucket)
            .map_err(|e| format!("[anomaly] bucket = {:?}: {e}", self.bucket))?;
        let bucket_ms = bucket.as_millis() as i64;
        if !(60_000..=86_400_000).contains(&bucket_ms) || 86_400_000 % bucket_ms != 0 {
            return Err(
                "[anomaly] bucket must be between 1m and 24h and divide a day (5m, 15m, 1h, …)"
                    .into(),
            );
        }
        if !(5..=90).contains(&self.baseline_days) {
            return Err(
                "[anomaly] baseline_days must be between 5 and 90 (the daily check needs four whole days)"
                    .into(),
            );
        }
        let cooldown_ms = humantime::parse_duration(&self.cooldown)
            .map_err(|e| format!("[anomaly] cooldown = {:?}: {e}", self.cooldown))?
            .as_millis()
            .min(i64::MAX as u128) as i64;
        let baseline_buckets = i64::from(self.baseline_days) * 86_400_000 / bucket_ms;
        if baseline_buckets > 10_000 {
            return Err("[anomaly] baseline_days / bucket gives more than 10000 buckets; use a longer bucket".into());
        }
        if !(self.z_threshold.is_finite() && self.z_threshold > 0.0) {
            return Err("[anomaly] z_threshold must be a positive number".into());
        }
        let within = |v: f64, max: f64| v.is_finite() && (0.0..=max).contains(&v);
        if !within(self.min_spend_usd, 1e6) || !within(self.learning_hours, 24.0 * 90.0) {
            return Err(
                "[anomaly] min_spend_usd must be 0 to 1000000 and learning_hours 0 to 2160".into(),
            );
        }
        if self.min_requests < 1 {
            return Err("[anomaly] min_requests must be at least 1".into());
        }
        if self.ipv4_prefix > 32 || self.ipv6_prefix > 128 {
            return Err("[anomaly] ipv4_prefix is at most 32, ipv6_prefix at most 128".into());
        }
        let kinds = |list: &[String], what: &str| {
            list.iter()
                .map(|k| {
                    Kind::parse(k).ok_or_else(|| {
                        format!(
                            "[anomaly] {what}: `{k}` is not one of {}",
                            Kind::ALL.map(|k| k.name()).join(", ")
                        )
                    })
                })
                .collect::<Result<std::collections::HashSet<_>, _>>()
        };
        let watch = match &self.watch {
            Some(list) => {
                let w = kinds(list, "watch")?;
                if w.contains(&Kind::NewCountry) && self.geoip.is_none() {
                    return Err("[anomaly] watch names new_country, which needs geoip = \"/path/GeoLite2-Country.mmdb\"".into());
                }
                w
            }
            // new_hour is noisy (people's hours, jobs that drift): asked for, not default.
            None => Kind::ALL
                .into_iter()
                .filter(|k| *k != Kind::NewHour)
                .collect(),
        };
        let checked = |list: &[String], what: &str| {
            let set = kinds(list, what)?;
            match set.iter().find(|k| !watch.contains(k)) {
                Some(k) => Err(format!(
                    "[anomaly] {what} names `{}`, which is not watched",
                    k.name()
                )),
                None => Ok(set),
            }
        };
        let suspend_credential = checked(&self.suspend_credential, "suspend_credential")?;
        let revoke_token = checked(&self.revoke_token, "revoke_token")?;
        if let Some(k) = revoke_token
            .iter()
            .find(|k| matches!(k, Kind::RateSpike | Kind::SpendSpike))
        {
            return Err(format!(
                "[anomaly] revoke_token names `{}`: only first sights (new_model, new_ip_range, new_country, new_hour) are one request of one token",
                k.name()
            ));
        }
        if self.geoip.is_none()
            && (suspend_credential.contains(&Kind::NewCountry)
                || revoke_token.contains(&Kind::NewCountry))
        {
            return Err(
                "[anomaly] new_country needs geoip = \"/path/GeoLite2-Country.mmdb\"".into(),
            );
        }
        match (&self.webhook_url, &self.webhook_secret) {
            (Some(url), Some(secret)) => {
                // The URL is not repeated: a chat webhook's URL is itself a secret.
                crate::oidc::check_url("[anomaly] webhook_url", url).map_err(|_| {
                    "[anomaly] webhook_url must be an https URL without a query (plain http only to this machine)".to_string()
                })?;
                airlock_secrets::SecretRef::parse(secret)
                    .map_err(|e| format!("[anomaly] webhook_secret: {e}"))?;
            }
            (Some(_), None) => {
                return Err("[anomaly] webhook_url needs webhook_secret (a reference such as env:ANOMALY_WEBHOOK_SECRET): alerts are signed".into())
            }
            (None, Some(_)) => return Err("[anomaly] webhook_secret without webhook_url".into()),
            (None, None) => {}
        }
        let timeout_ok = self.webhook_timeout_secs.is_finite()
            && self.webhook_timeout_secs > 0.0
            && self.webhook_timeout_secs <= 60.0;
        if !(1..=20).contains(&self.webhook_attempts) || !timeout_ok {
            return Err(
                "[anomaly] webhook_attempts must be 1–20 and webhook_timeout_secs in (0, 60]"
                    .into(),
            );
        }
        Ok(airlock_spend::anomaly::Settings {
            bucket_ms,
            baseline_buckets,
            z_threshold: self.z_threshold,
            min_requests: self.min_requests,
            min_spend_nanos: (self.min_spend_usd * 1e9).round() as i64,
            learning_ms: (self.learning_hours * 3_600_000.0).round() as i64,
            v4_prefix: self.ipv4_prefix,
            v6_prefix: self.ipv6_prefix,
            watch,
            suspend_credential,
            revoke_token,
            cooldown_ms,
        })
    }
}

/// What acting on an alarm needs: the database and the credentials (to suspend one), the
/// tokens (to revoke one), the audit writer and the client that posts the webhook.
pub struct Reactor {
    /// The database.
    pub store: airlock_store::Store,
    /// The credentials in force.
    pub creds: std::sync::Arc<Credentials>,
    /// The verifier and the revocations.
    pub tokens: std::sync::Arc<Tokens>,
    /// The audit writer.
    pub recorder: Recorder,
    /// The webhook's client.
    pub client: crate::util::HttpClient,
}

/// Where alerts go, and how they are signed.
pub struct Webhook {
    url: http::Uri,
    secret: airlock_secrets::Secret,
    attempts: u32,
    timeout: std::time::Duration,
}

/// Builds the detector from `[anomaly]` and the usage table, and starts the task that acts on
/// its alarms. `None` when `enabled = false`.
pub async fn start(
    app: &std::sync::Arc<Reactor>,
    cfg: &AnomalyConfig,
    test_clock: bool,
) -> anyhow::Result<Option<std::sync::Arc<Detector>>> {
    if !cfg.enabled {
        return Ok(None);
    }
    let settings = cfg.settings().map_err(anyhow::Error::msg)?;
    let geo = match &cfg.geoip {
        Some(p) => Some(
            airlock_spend::anomaly::open_geoip(p)
                .map_err(|e| anyhow::anyhow!("[anomaly] geoip = {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let webhook = match (&cfg.webhook_url, &cfg.webhook_secret) {
        (Some(url), Some(secret)) => {
            let r = airlock_secrets::SecretRef::parse(secret)
                .map_err(|e| anyhow::anyhow!("[anomaly] webhook_secret: {e}"))?;
            let secret = app
                .creds
                .secrets
                .resolve(&r, "anomaly-webhook")
                .await
                .map_err(|e| anyhow::anyhow!("[anomaly] webhook_secret {r}: {e}"))?
                .secret;
            if secret.len() < 32 {
                anyhow::bail!("[anomaly] webhook_secret {r} holds {} bytes; use at least 32 random bytes (e.g. openssl rand -hex 32)", secret.len());
            }
            Some(Webhook {
                url: url
                    .parse()
                    .map_err(|_| anyhow::anyhow!("[anomaly] webhook_url is not a URL"))?,
                secret,
                attempts: cfg.webhook_attempts,
                timeout: std::time::Duration::from_secs_f64(cfg.webhook_timeout_secs),
            })
        }
        _ => None,
    };
    let since = crate::util::now_ms() - settings.baseline_buckets * settings.bucket_ms;
    // Without its history the detector still runs (it learns again), rather than keeping
    // the gateway from starting.
    let stored = match app.store.anomaly_history(since, settings.bucket_ms).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot read usage history for anomaly detection: starting without a baseline");
            Default::default()
        }
    };
    if stored.truncated {
        tracing::warn!("the usage history holds more distinct values than anomaly detection reads at start: some known values will be reported as new");
    }
    let kind = |identity: bool| {
        if identity {
            SubjectKind::Identity
        } else {
            SubjectKind::Credential
        }
    };
    let history = History {
        credentials: app
            .store
            .list_credentials()
            .await?
            .into_iter()
            .map(|c| (c.name, c.created_at))
            .collect(),
        firsts: stored
            .firsts
            .into_iter()
            .map(|(i, n, t)| (kind(i), n, t))
            .collect(),
        tallies: stored
            .tallies
            .into_iter()
            .map(|(i, n, b, r, c)| (kind(i), n, b, r.max(0) as u64, c))
            .collect(),
        seen: stored
            .seen
            .into_iter()
            .map(|(i, n, m, ip, h)| (kind(i), n, m, ip, h.map(|h| h.rem_euclid(24) as u32)))
            .collect(),
    };
    let (tx, rx) = mpsc::channel(4096);
    let d = std::sync::Arc::new(Detector::new(
        settings,
        geo,
        test_clock,
        tx,
        std::sync::Arc::new(airlock_spend::SystemClock),
    ));
    d.learn(history);
    // The task ends with the server (a strong handle would keep itself alive: the recorder
    // it holds holds the detector, the alarms' only sender).
    tokio::spawn(act(
        std::sync::Arc::downgrade(app),
        rx,
        webhook.map(std::sync::Arc::new),
        d.deliveries.clone(),
    ));
    Ok(Some(d))
}

/// Acts on alarms, in order: suspends (when the policy says so), audits, then hands the alert
/// to its webhook delivery (retried in a task of its own, so a slow receiver delays nothing).
async fn act(
    app: std::sync::Weak<Reactor>,
    mut rx: mpsc::Receiver<Anomaly>,
    webhook: Option<std::sync::Arc<Webhook>>,
    deliveries: std::sync::Arc<Deliveries>,
) {
    // Deliveries in flight at most (each retried for minutes when the receiver is down);
    // past it an alert's webhook is dropped and counted as failed (its audit record stays).
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    while let Some(a) = rx.recv().await {
        let Some(app) = app.upgrade() else { return };
        let mut actions = Vec::new();
        let mut acted = false;
        if a.suspend_credential {
            let (ok, what) = suspend_credential(&app, &a.subject).await;
            acted |= ok;
            actions.push(what);
        }
        if a.revoke_token {
            if let Some(id) = &a.token_id {
                let (ok, what) = revoke_token(&app, id).await;
                acted |= ok;
                actions.push(what);
            }
        }
        let action = if actions.is_empty() {
            "alerted".to_string()
        } else {
            actions.join("; ")
        };
        tracing::warn!(
            kind = a.kind.name(),
            subject_kind = a.subject_kind.name(),
            subject = %a.subject,
            action = %action,
            "anomaly: {}",
            a.describe()
        );
        let now = crate::util::now_ms();
        let rec = airlock_audit::Record {
            ts: now,
            actor_kind: "system".into(),
            actor: a.token_id.clone(),
            action: "anomaly.detected".into(),
            target_kind: Some(a.subject_kind.name().into()),
            target: Some(a.subject.clone()),
            outcome: if acted { "acted" } else { "alerted" }.into(),
            reason: Some(format!("{}; {action}", a.describe())),
            request_id: Some(a.request_id.clone()),
            client_ip: a.client_ip.clone(),
            credential: a.credential.clone(),
            model: a.model.clone(),
            subject: a.identity.clone(),
            ..Default::default()
        };
        app.recorder.write_nowait(None, rec);
        let counts = Some(deliveries.clone());
        if let Some(hook) = &webhook {
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                tracing::error!("too many anomaly webhooks in flight: this alert is not sent (it is in the audit log)");
                if let Some(c) = counts {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            let body = serde_json::json!({
                "type": "airlock.anomaly",
                "id": format!("anom_{}", airlock_secrets::random_token(16)),
                "created_ms": now,
                "anomaly": &a,
                "action": action,
            });
            let hook = hook.clone();
            let client = app.client.clone();
            tokio::spawn(async move {
                let ok = deliver(&client, &hook, body.to_string().into_bytes()).await;
                drop(permit);
                if let Some(c) = counts {
                    if ok {
                        c.delivered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

/// Suspends a credential after an alarm: the database, then memory (retried once, as a
/// lockdown does); says whether it took effect and what was done.
async fn suspend_credential(app: &std::sync::Arc<Reactor>, name: &str) -> (bool, String) {
    match app.store.set_suspended(name, true).await {
        Ok(true) => {
            if app.creds.reload().await.is_ok() || app.creds.reload().await.is_ok() {
                (
                    true,
                    format!(
                        "credential {name} suspended (airlock credential resume {name} lifts it)"
                    ),
                )
            } else {
                tracing::error!(credential = name, "suspended a credential in the database but cannot reload credentials: retrying in the background");
                // Keep trying: the database says suspended, memory must follow.
                let weak = std::sync::Arc::downgrade(app);
                {
                    tokio::spawn(async move {
                        for wait in [1u64, 2, 5, 10, 30, 60, 120, 300] {
                            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                            let Some(app) = weak.upgrade() else { return };
                            if app.creds.reload().await.is_ok() {
                                tracing::warn!(
                                    "credentials reloaded: the anomaly's suspension is in effect"
                                );
                                return;
                            }
                        }
                        tracing::error!("credentials still cannot be reloaded: a suspended credential keeps serving until a restart");
                    });
                }
                (
                    false,
                    format!("credential {name} suspended in the database; this server could not reload it yet and keeps trying"),
                )
            }
        }
        Ok(false) => (false, format!("credential {name} no longer exists")),
        Err(e) => {
            tracing::error!(error = %e, "cannot suspend a credential after an anomaly");
            (
                false,
                format!("suspending credential {name} failed: the database failed"),
            )
        }
    }
}

/// Revokes the token whose request raised an alarm.
async fn revoke_token(app: &Reactor, id: &str) -> (bool, String) {
    let serial = app.tokens.serial().await;
    match app.store.revoke_token(id, crate::util::now_ms()).await {
        Ok(false) => (false, format!("token {id} is not in this server's records")),
        Ok(true) => {
            app.tokens.mark_revoked(&serial, id);
            (true, format!("token {id} revoked"))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot revoke a token after an anomaly");
            (
                false,
                format!("revoking token {id} failed: the database failed"),
            )
        }
    }
}

/// POSTs an alert: JSON, signed with `x-airlock-signature: t=<unix seconds>,v1=<hex
/// HMAC-SHA256(secret, "<t>.<body>")>` (the time is signed too, so a receiver can refuse old
/// replays). Retried with exponential backoff (1 s, 2 s, 4 s, …) on connection errors, 408, 429
/// and 5xx, up to `webhook_attempts` times. Returns whether a 2xx came back.
pub async fn deliver(client: &crate::util::HttpClient, hook: &Webhook, body: Vec<u8>) -> bool {
    let body = bytes::Bytes::from(body);
    for attempt in 0..hook.attempts {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1 << (attempt - 1).min(6))).await;
        }
        let t = crate::util::now_ms() / 1000;
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&body);
        let sig = hook.secret.sign_hmac_sha256(&signed);
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(hook.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "airlock-anomaly-webhook")
            .header("x-airlock-event", "anomaly")
            .header("x-airlock-signature", format!("t={t},v1={sig}"))
            .body(http_body_util::Full::new(body.clone()));
        let Ok(req) = req else { return false };
        match tokio::time::timeout(hook.timeout, client.request(req)).await {
            Ok(Ok(resp)) => {
                let s = resp.status();
                if s.is_success() {
                    return true;
                }
                if !(s.is_server_error()
                    || s == http::StatusCode::TOO_MANY_REQUESTS
                    || s == http::StatusCode::REQUEST_TIMEOUT)
                {
                    tracing::error!(
                        status = s.as_u16(),
                        "the anomaly webhook refused an alert; not retried"
                    );
                    return false;
                }
                tracing::warn!(
                    status = s.as_u16(),
                    attempt,
                    "the anomaly webhook failed; retrying"
                );
            }
            Ok(Err(e)) => tracing::warn!(error = %e, attempt, "cannot reach the anomaly webhook"),
            Err(_) => tracing::warn!(attempt, "the anomaly webhook did not answer in time"),
        }
    }
    tracing::error!("an anomaly alert could not be delivered to the webhook");
    false
}
