//! Incident mode: `lockdown` (every issued token refused at once, chosen credentials
//! suspended, in one audited act) and `report` (the blast radius since a time).

use crate::credentials::Credentials;
use crate::tokens::Tokens;
use crate::usage::Recorder;
use crate::util::now_ms;
use airlock_providers::dialect::ApiError;
use airlock_store::SeenColumn;
use airlock_token::{KeyRing, Verifier};
use http::StatusCode;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What an incident lockdown and its report need: the database, the tokens in force (a
/// lockdown replaces the verifier), the credentials (it suspends some), the audit writer, the
/// key directory (where the new root key is written) and the verifier's cache size.
pub struct Responder {
    /// The database.
    pub store: airlock_store::Store,
    /// The verifier and the revocations.
    pub tokens: Arc<Tokens>,
    /// The credentials in force.
    pub creds: Arc<Credentials>,
    /// The audit writer.
    pub recorder: Recorder,
    /// The key directory.
    pub keys_dir: std::path::PathBuf,
    /// Verified tokens kept in the new verifier's cache.
    pub cache_capacity: usize,
}

use airlock_api::incident as api;
pub use airlock_api::incident::LockdownRequest;

fn store_failed(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "store failure during an incident action");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the database failed; see the server log",
    )
}

/// Moves tokens to a new root-key generation: a new root key signs from now on and every key
/// before it is retired from verification, so every token issued so far is refused at once
/// (this server) and after any restart (the generation is in the database). Admin keys are
/// not tokens and keep working, so fresh tokens can be minted right after.
pub async fn lockdown(
    app: &Arc<Responder>,
    req: LockdownRequest,
) -> Result<api::Lockdown, ApiError> {
    let reason = req
        .reason
        .clone()
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.chars().take(500).collect::<String>());
    if reason
        .as_deref()
        .is_some_and(airlock_secrets::looks_like_key)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the reason looks like it holds a key; describe the incident in words",
        ));
    }
    // Which credentials to suspend, all checked before anything changes (I8).
    let creds = app.creds.load_full();
    let mut suspend = BTreeSet::new();
    for s in &req.suspend {
        let matched: Vec<&str> = creds
            .all
            .iter()
            .filter(|c| s == "all" || c.env == *s || c.name == *s)
            .map(|c| c.name.as_str())
            .collect();
        if matched.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "`{s}` is neither `all`, an environment nor a credential; nothing was changed"
                ),
            ));
        }
        suspend.extend(matched.into_iter().map(str::to_string));
    }
    let _serial = app.tokens.serial().await;
    let keys_dir = app.keys_dir.clone();
    let Some(mut id) = app.tokens.verifier.load().keys().newest_id().checked_add(1) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_key_id_left",
            "the root key ids are used up; nothing was changed",
        ));
    };
    let public = loop {
        match KeyRing::generate(&keys_dir, id) {
            Ok(p) => break p,
            Err(_) if keys_dir.join(format!("root-{id}.key")).exists() && id < u32::MAX => id += 1,
            Err(e) => return Err(store_failed(e)),
        }
    };
    let ring = KeyRing::load(&keys_dir, id)
        .map_err(store_failed)?
        .retire_below(id);
    let suspend: Vec<String> = suspend.into_iter().collect();
    let now = now_ms();
    app.store
        .lockdown(id, id, &suspend, reason.as_deref(), now)
        .await
        .map_err(store_failed)?;
    // From here no token of an earlier generation verifies, and no verification is cached.
    app.tokens
        .verifier
        .store(Arc::new(Verifier::new(Arc::new(ring), app.cache_capacity)));
    if app.creds.reload().await.is_err() {
        // The suspension is in the database; memory must follow before this answers.
        if let Err(e) = app.creds.reload().await {
            tracing::error!(error = %e, "cannot reload credentials after a lockdown");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "tokens are locked down, but the suspended credentials could not be reloaded; restart the server",
            ));
        }
    }
    app.recorder.write_nowait(
        None,
        airlock_audit::Record {
            ts: now,
            actor_kind: "system".into(),
            action: "incident.lockdown".into(),
            target_kind: Some("tokens".into()),
            target: Some(format!("root keys below {id}")),
            outcome: "ok".into(),
            reason: Some(format!(
                "every token signed before root key {id} refused; suspended: [{}]{}",
                suspend.join(", "),
                reason
                    .as_deref()
                    .map(|r| format!("; reason: {r}"))
                    .unwrap_or_default()
            )),
            ..Default::default()
        },
    );
    tracing::warn!(
        root_key_id = id,
        suspended = suspend.len(),
        "incident lockdown: every earlier token is refused"
    );
    Ok(api::Lockdown {
        root_key_id: id,
        public_key: format!("ed25519/{}", public.to_bytes_hex()),
        tokens_refused: format!("every token signed by a root key below {id}"),
        suspended: suspend,
        at: now,
    })
}

/// `GET /admin/v1/incident/report?since=T`: for every credential, who used it since `since`
/// (identities, tokens, client addresses, models), the volume and spend against its own
/// baseline (the average of the seven windows of the same length before `since`), the
/// identities and addresses never seen in the 30 days before, and its rotation state.
pub async fn report(app: &Arc<Responder>, since: i64, until: i64) -> Result<api::Report, ApiError> {
    let window = (until - since).max(1);
    let groups = app
        .store
        .usage_groups(since, until)
        .await
        .map_err(store_failed)?;
    let rows = app.store.list_credentials().await.map_err(store_failed)?;
    let mut out = Vec::new();
    for c in &rows {
        let mine: Vec<_> = groups.iter().filter(|g| g.credential == c.name).collect();
        let (requests, spend) = app
            .store
            .credential_volume(&c.name, since, until)
            .await
            .map_err(store_failed)?;
        let (base_requests, base_spend) = app
            .store
            .credential_volume(&c.name, since - 7 * window, since)
            .await
            .map_err(store_failed)?;
        let known_subjects = app
            .store
            .seen_before(&c.name, SeenColumn::Subject, since - 30 * 86_400_000, since)
            .await
            .map_err(store_failed)?;
        let known_ips = app
            .store
            .seen_before(
                &c.name,
                SeenColumn::ClientIp,
                since - 30 * 86_400_000,
                since,
            )
            .await
            .map_err(store_failed)?;
        let mut identities: BTreeMap<String, i64> = BTreeMap::new();
        let mut tokens: BTreeMap<String, (String, i64)> = BTreeMap::new();
        let mut ips: BTreeMap<String, i64> = BTreeMap::new();
        let mut models: BTreeMap<String, i64> = BTreeMap::new();
        let (mut input, mut output) = (0i64, 0i64);
        for g in &mine {
            let subject = g.subject.clone().unwrap_or_else(|| "-".into());
            *identities.entry(subject.clone()).or_default() += g.requests;
            if let Some(t) = &g.token_id {
                let e = tokens.entry(t.clone()).or_insert((subject.clone(), 0));
                e.1 += g.requests;
            }
            *ips.entry(g.client_ip.clone().unwrap_or_else(|| "-".into()))
                .or_default() += g.requests;
            *models
                .entry(g.model.clone().unwrap_or_else(|| "-".into()))
                .or_default() += g.requests;
            input += g.input_tokens;
            output += g.output_tokens;
        }
        let baseline = base_requests as f64 / 7.0;
        let rotation = app
            .store
            .rotations(&c.name, 1)
            .await
            .ok()
            .and_then(|r| r.into_iter().next())
            .map(|r| api::LastRotation {
                state: r.state,
                promoted_at: r.promoted_at,
                confirmed_at: r.confirmed_at,
            })
            .unwrap_or_else(|| api::LastRotation {
                state: "never rotated".into(),
                promoted_at: None,
                confirmed_at: None,
            });
        out.push(api::CredentialUse {
            credential: c.name.clone(),
            provider: c.provider.clone(),
            env: c.env.clone(),
            suspended: c.suspended,
            fingerprint: c.fingerprint.clone(),
            requests,
            input_tokens: input,
            output_tokens: output,
            cost_micros: spend,
            baseline: api::Baseline {
                requests_per_window: baseline,
                cost_micros_per_window: base_spend as f64 / 7.0,
                windows: 7,
            },
            requests_vs_baseline: (baseline > 0.0).then(|| requests as f64 / baseline),
            new_identities: identities
                .keys()
                .filter(|s| !known_subjects.contains(*s))
                .cloned()
                .collect(),
            new_client_ips: ips
                .keys()
                .filter(|ip| !known_ips.contains(*ip))
                .cloned()
                .collect(),
            identities: identities
                .into_iter()
                .map(|(s, n)| api::IdentityUse {
                    first_seen: !known_subjects.contains(&s),
                    subject: s,
                    requests: n,
                })
                .collect(),
            tokens: tokens
                .into_iter()
                .map(|(t, (s, n))| api::TokenUse {
                    token_id: t,
                    subject: s,
                    requests: n,
                })
                .collect(),
            client_ips: ips
                .into_iter()
                .map(|(ip, n)| api::AddressUse {
                    first_seen: !known_ips.contains(&ip),
                    ip,
                    requests: n,
                })
                .collect(),
            models: models
                .into_iter()
                .map(|(m, n)| api::ModelUse {
                    model: m,
                    requests: n,
                })
                .collect(),
            rotation,
        });
    }
    Ok(api::Report {
        since,
        until,
        window_secs: window / 1000,
        credentials: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{key, Kit};
    use http::HeaderMap;

    fn token(kit: &Kit) -> HeaderMap {
        kit.token("prod", &["gpt-*"])
    }

    #[tokio::test]
    async fn a_lockdown_refuses_every_earlier_token_and_suspends_what_it_names() {
        let kit = Kit::new("").await;
        for (name, env) in [("p1", "prod"), ("p2", "prod"), ("d1", "dev")] {
            let f = kit.key_file(name, &key(name));
            kit.credential(
                name,
                env,
                &format!("file:{}", f.display()),
                "http://127.0.0.1:9/v1",
            )
            .await;
        }
        let before = token(&kit);
        assert!(kit.app.tokens.authenticate(&before).is_ok());
        let out = lockdown(
            &kit.app.responder,
            LockdownRequest {
                suspend: vec!["prod".into()],
                reason: Some("vendor breach".into()),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("lockdown: {}", e.message));
        let refused = kit.app.tokens.authenticate(&before).err();
        assert_eq!(refused.map(|e| e.status), Some(StatusCode::UNAUTHORIZED));
        assert!(
            kit.app.tokens.authenticate(&token(&kit)).is_ok(),
            "new tokens work"
        );
        assert_eq!(out.suspended, ["p1", "p2"]);
        let set = kit.app.creds.load_full();
        let suspended: Vec<_> = set
            .all
            .iter()
            .filter(|c| c.suspended)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(suspended, ["p1", "p2"]);
        let records = kit.audit("incident.lockdown").await;
        assert_eq!(records.len(), 1);
        assert!(records[0]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("vendor breach"));
    }

    #[tokio::test]
    async fn a_lockdown_naming_nothing_known_changes_nothing() {
        let kit = Kit::new("").await;
        let before = token(&kit);
        let newest = kit.app.tokens.verifier.load().keys().newest_id();
        let e = lockdown(
            &kit.app.responder,
            LockdownRequest {
                suspend: vec!["staging".into()],
                reason: None,
            },
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("refused"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(kit.app.tokens.verifier.load().keys().newest_id(), newest);
        assert!(kit.app.tokens.authenticate(&before).is_ok());
        assert!(kit.audit("incident.lockdown").await.is_empty());
    }

    #[tokio::test]
    async fn a_reason_shaped_like_a_key_is_refused() {
        let kit = Kit::new("").await;
        let e = lockdown(
            &kit.app.responder,
            LockdownRequest {
                suspend: Vec::new(),
                reason: Some(key("leak")),
            },
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("refused"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
