//! Rotation you can prove: **stage** the new key (a new version in the customer's store, or a
//! new sealed value), **test** it with the provider's cheapest authenticated call, **promote**
//! it atomically (every request from that instant uses it; requests already under way finish
//! with the key they started with), then **confirm**: the provider refuses the old key and
//! the audit log shows no request that used the old key's fingerprint after the promotion
//! (plus `[rotation] grace_secs` for requests in flight). Each step is an audit record; the
//! rotation itself is a row in `rotations` (fingerprints, last 4, versions; never a key).
//!
//! A new version seen by the background refresh (a reference that follows the store's latest
//! version) is a candidate: it is tested and promoted the same way by itself, and a candidate
//! the provider refuses is not promoted (the old key keeps serving) and raises an alert.
//!
//! Why one file: the manual rotation, the automatic one and `confirm_old` share the rotation row's
//! states and their audit steps; its length past 800 lines is its tests.

use crate::credentials::{Credential, Credentials};
use crate::upstream::Probe;
use crate::usage::Recorder;
use crate::util::now_ms;
use crate::util::HttpClient;
use airlock_providers::dialect::ApiError;
use airlock_secrets::{ResolveError, Secret, SecretRef};
use airlock_store::RotationRow;
use http::StatusCode;
use std::sync::Arc;
use std::time::Instant;

/// What rotating a credential's key needs: the credentials (their keys and stores), the
/// database (rotation rows, retired keys), the HMAC key, the audit writer, the client that asks
/// the provider whether a key works, and how long an old key may still be seen after a
/// promotion (`[rotation] grace_secs`).
pub struct Rotator {
    /// The database.
    pub store: airlock_store::Store,
    /// The credentials in force.
    pub creds: Arc<Credentials>,
    /// HMAC key for fingerprints.
    pub hmac: Arc<airlock_secrets::HmacKey>,
    /// The audit writer.
    pub recorder: Recorder,
    /// The provider client.
    pub client: HttpClient,
    /// Seconds an old key may still be used after its promotion.
    pub grace_secs: u64,
}

/// Where a rotation's new key comes from.
pub enum NewKey {
    /// A value given on stdin (sealed credentials).
    Value(Secret),
    /// The newest version in the credential's store.
    Store,
}

fn step(app: &Rotator, row: &RotationRow, action: &str, outcome: &str, reason: String) {
    app.recorder.write_nowait(
        None,
        airlock_audit::Record {
            ts: now_ms(),
            actor_kind: "system".into(),
            action: action.into(),
            target_kind: Some("credential".into()),
            target: Some(row.credential.clone()),
            outcome: outcome.into(),
            reason: Some(format!("{} ({}): {reason}", row.id, row.source)),
            credential: Some(row.credential.clone()),
            ..Default::default()
        },
    );
}

fn short(fp: &Option<String>, last4: &Option<String>, version: &Option<String>) -> String {
    let mut s = fp
        .as_deref()
        .map(|f| f.chars().take(24).collect::<String>())
        .unwrap_or_else(|| "?".into());
    if let Some(l) = last4.as_deref().filter(|l| !l.is_empty()) {
        s.push_str(&format!(" …{l}"));
    }
    if let Some(v) = version {
        s.push_str(&format!(" (version {v})"));
    }
    s
}

/// "new … in service; old … no longer given to any request", for the promote record.
fn swapped(row: &RotationRow) -> String {
    format!(
        "{} in service; {} no longer given to any request",
        short(&row.new_fingerprint, &row.new_last4, &row.new_version),
        short(&row.old_fingerprint, &row.old_last4, &row.old_version)
    )
}

enum Promotion {
    /// Only the key in memory changes (the store already serves the new one).
    InPlace,
    /// Secrets Manager: move `AWSCURRENT` to the staged version.
    AwsLabels { id: String, new: String },
    /// A new reference: a new sealed secret or a new pinned version.
    NewRef(SecretRef, Option<Box<airlock_store::SealedRow>>),
}

fn api(status: StatusCode, code: &'static str, msg: String) -> ApiError {
    ApiError::new(status, code, msg)
}

/// The keys rotations of this credential (since it was added) took out of service.
async fn retired(
    app: &Rotator,
    c: &Credential,
) -> Result<std::collections::HashMap<String, i64>, ApiError> {
    // Every key ever retired under this name, also by a credential removed and added again:
    // a rotated-out key that may not be revoked yet is never put back.
    app.store.retired_keys(&c.name).await.map_err(store_error)
}

fn store_error(e: airlock_store::StoreError) -> ApiError {
    tracing::error!(error = %e, "rotation: database failure");
    api(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the database failed; see the server log".into(),
    )
}

/// `credential rotate NAME`: stage → test → promote. A failed test changes nothing and is
/// returned as a rotation in state `failed`.
pub async fn rotate(
    app: &Arc<Rotator>,
    name: &str,
    new: NewKey,
    source: &str,
) -> Result<RotationRow, ApiError> {
    let Some(c) = app.creds.load().get(name).cloned() else {
        return Err(api(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}`"),
        ));
    };
    let _one = c.rotating.lock().await;
    let unreadable = |e: ResolveError| {
        api(
            if e.is_definite() {
                StatusCode::CONFLICT
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            "store_unavailable",
            format!("credential `{name}`: {e}"),
        )
    };
    // The key in service now.
    // The key in service: (fingerprint, last 4, version, the key when it is in memory).
    let old = match c.cell().current() {
        Some((s, v)) => (s.fingerprint(&app.hmac), s.last4(), v, Some(s)),
        // A key waiting for its test in an empty cell (a restart found another key in the
        // store): the one replaced is the one the inventory approved.
        None if c.cell().candidate().is_some() => {
            let (fp, v) = c.approved();
            (fp.unwrap_or_default(), String::new(), v, None)
        }
        None => {
            let s = c.secret(&app.creds, "rotation").await.map_err(unreadable)?;
            (s.fingerprint(&app.hmac), s.last4(), c.version(), Some(s))
        }
    };
    let (staged, new_version, promotion) = match (new, c.reference()) {
        (NewKey::Value(s), SecretRef::Sealed(_)) => {
            let row = app.creds.secrets.seal(name, &s).await.map_err(|e| {
                api(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "kek_unavailable",
                    format!("cannot seal the new key: {e}"),
                )
            })?;
            let version = Some(format!("{}@{}", row.kek, row.kek_version));
            let r = SecretRef::Sealed(row.id.clone());
            (Arc::new(s), version, Promotion::NewRef(r, Some(Box::new(row))))
        }
        (NewKey::Value(_), r) => {
            return Err(api(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "the key of `{name}` lives in {} ({r}): write the new key there (a new version) and rotate without --new-secret-stdin",
                    r.store()
                ),
            ))
        }
        (NewKey::Store, SecretRef::Sealed(_)) => {
            return Err(api(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("`{name}` is sealed: give the new key with --new-secret-stdin"),
            ))
        }
        (NewKey::Store, r) => {
            let (res, from_pending) = app
                .creds
                .secrets
                .read_newest(r, name)
                .await
                .map_err(unreadable)?;
            let promotion = match r {
                SecretRef::AwsSm { id, .. } if from_pending => Promotion::AwsLabels {
                    id: id.clone(),
                    new: res.version.clone().unwrap_or_default(),
                },
                SecretRef::Vault {
                    mount,
                    path,
                    field,
                    version: Some(_),
                } => Promotion::NewRef(
                    SecretRef::Vault {
                        mount: mount.clone(),
                        path: path.clone(),
                        field: field.clone(),
                        version: res.version.as_deref().and_then(|v| v.parse().ok()),
                    },
                    None,
                ),
                _ => Promotion::InPlace,
            };
            (Arc::new(res.secret), res.version, promotion)
        }
    };
    let staged_fp = staged.fingerprint(&app.hmac);
    if let Some(at) = retired(app, &c).await?.get(&staged_fp) {
        return Err(api(
            StatusCode::CONFLICT,
            "key_retired",
            format!(
                "the new key in the store is one a rotation took out of service (at {at} ms); a rotated-out key is never put back: put a new key there"
            ),
        ));
    }
    if staged_fp == old.0 {
        return Err(api(
            StatusCode::CONFLICT,
            "nothing_to_rotate",
            format!(
                "{} holds the key `{name}` uses now: put the new key there first (a new KV version; AWSPENDING in Secrets Manager), then rotate",
                c.reference().store()
            ),
        ));
    }
    let mut row = RotationRow {
        id: format!("rot_{}", airlock_secrets::random_token(8)),
        credential: name.to_string(),
        source: source.to_string(),
        state: "staged".into(),
        old_fingerprint: Some(old.0.clone()).filter(|f| !f.is_empty()),
        old_last4: Some(old.1.clone()).filter(|l| !l.is_empty()),
        old_version: old.2.clone(),
        old_ref: Some(c.reference().to_string()),
        new_fingerprint: Some(staged.fingerprint(&app.hmac)),
        new_last4: Some(staged.last4()),
        new_version,
        started_at: now_ms(),
        ..Default::default()
    };
    save(app, &row).await?;
    step(
        app,
        &row,
        "credential.rotation.stage",
        "ok",
        format!(
            "staged {} to replace {}",
            short(&row.new_fingerprint, &row.new_last4, &row.new_version),
            short(&row.old_fingerprint, &row.old_last4, &row.old_version)
        ),
    );
    finish(app, &c, &mut row, staged, promotion).await?;
    Ok(row)
}

fn store_error_or_conflict(e: airlock_store::StoreError) -> ApiError {
    match e {
        airlock_store::StoreError::Conflict(m) => api(StatusCode::CONFLICT, "conflict", m),
        e => store_error(e),
    }
}

async fn save(app: &Rotator, row: &RotationRow) -> Result<(), ApiError> {
    app.store.save_rotation(row).await.map_err(|e| {
        tracing::error!(error = %e, "cannot record a rotation");
        api(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database failed; see the server log".into(),
        )
    })
}

/// Test, then promote (or record the failure).
async fn finish(
    app: &Arc<Rotator>,
    c: &Arc<Credential>,
    row: &mut RotationRow,
    staged: Arc<Secret>,
    promotion: Promotion,
) -> Result<(), ApiError> {
    let p = crate::upstream::probe(&app.client, c, &staged).await;
    row.tested_at = Some(now_ms());
    if p.status != "ok" {
        row.state = "failed".into();
        row.reason = Some(format!("test: {}; the old key stays in service", p.detail));
        save(app, row).await?;
        step(app, row, "credential.rotation.test", "failed", p.detail);
        return Ok(());
    }
    step(app, row, "credential.rotation.test", "ok", p.detail);
    let name = &row.credential;
    let seen = (
        row.new_fingerprint.clone().unwrap_or_default(),
        row.new_last4.clone().unwrap_or_default(),
    );
    let mut aws_labels_moved = false;
    let (new_ref, sealed) = match promotion {
        Promotion::InPlace => (c.reference().clone(), None),
        Promotion::AwsLabels { id, new } => {
            aws_labels_moved = true;
            let old = row.old_version.clone();
            if let Err(e) = app
                .creds
                .secrets
                .promote_aws_version(&id, &new, old.as_deref())
                .await
            {
                row.state = "failed".into();
                row.reason = Some(format!(
                    "promote: cannot move AWSCURRENT to {new}: {e}; the old key stays in service"
                ));
                save(app, row).await?;
                step(
                    app,
                    row,
                    "credential.rotation.promote",
                    "failed",
                    e.to_string(),
                );
                return Ok(());
            }
            (c.reference().clone(), None)
        }
        Promotion::NewRef(r, sealed) => (r, sealed),
    };
    let now = now_ms();
    let labels_moved = aws_labels_moved;
    if let Err(e) = app
        .store
        .promote_key(
            name,
            &c.reference().to_string(),
            &new_ref.to_string(),
            sealed.as_deref(),
            (&seen.0, &seen.1, row.new_version.as_deref()),
            now,
        )
        .await
    {
        tracing::error!(error = %e, "cannot record a promotion");
        row.state = "failed".into();
        row.reason = Some(match &e {
            airlock_store::StoreError::Conflict(m) => format!("promote: {m}; nothing was changed"),
            _ if labels_moved => "promote: the database failed after AWSCURRENT was moved; the refresher will test and promote the new key by itself".into(),
            _ => "promote: the database failed; the old key stays in service".into(),
        });
        save(app, row).await?;
        return Err(store_error_or_conflict(e));
    }
    // The swap: from here every request takes the new key.
    if new_ref == *c.reference() {
        c.cell().promote(staged, row.new_version.clone(), &new_ref);
        c.mark_seen(&seen.0, row.new_version.clone());
    } else {
        // A new reference (sealed, pinned version): the credential is rebuilt from the
        // database; its new cell starts with the promoted key.
        let mut reloaded = app.creds.reload().await;
        if reloaded.is_err() {
            reloaded = app.creds.reload().await;
        }
        match (reloaded, app.creds.load().get(name)) {
            (Ok(()), Some(n)) if *n.reference() == new_ref => {
                n.cell().promote(staged, row.new_version.clone(), &new_ref);
                n.mark_seen(&seen.0, row.new_version.clone());
            }
            _ => {
                // The database holds the new reference; the old credential must not keep
                // serving from memory: its cell is emptied, the next request reads the store.
                tracing::error!(credential = %name, "could not reload after a promotion; the key will be read from the store");
                c.cell().promote(staged, row.new_version.clone(), &new_ref);
            }
        }
    }
    row.promoted_at = Some(now);
    row.state = "promoted".into();
    row.reason = Some(
        "waiting for the old key to be revoked at the provider; then run `credential verify --old`"
            .into(),
    );
    save(app, row).await?;
    step(app, row, "credential.rotation.promote", "ok", swapped(row));
    tracing::info!(credential = %name, rotation = %row.id, "key rotated");
    Ok(())
}

/// What the background refresher does with a candidate key: test it and promote it, or keep
/// the old key and alert (once per candidate; retested every refresh interval).
pub async fn auto_rotate(app: Arc<Rotator>, c: Arc<Credential>) {
    let Some((candidate, version)) = c.cell().candidate() else {
        return;
    };
    let fp = candidate.fingerprint(&app.hmac);
    {
        let Ok(mut st) = c.auto.lock() else { return };
        if st.testing
            || st
                .next_test
                .is_some_and(|t| Instant::now() < t && st.fp.as_deref() == Some(&fp))
        {
            return;
        }
        st.testing = true;
        st.fp = Some(fp.clone());
    }
    let _one = c.rotating.lock().await;
    // A key a rotation took out of service is never put back, whatever the store says.
    let Ok(retired) = retired(&app, &c).await else {
        // The history cannot be read: test again later rather than risk putting back a key.
        if let Ok(mut st) = c.auto.lock() {
            st.testing = false;
            st.next_test = Some(Instant::now() + app.creds.cache_policy.ttl);
        }
        return;
    };
    {
        if retired.contains_key(&fp) {
            c.cell().discard_candidate(&candidate);
            if let Ok(mut st) = c.auto.lock() {
                st.testing = false;
                if st.alerted.as_deref() != Some(fp.as_str()) {
                    st.alerted = Some(fp.clone());
                    tracing::error!(credential = %c.name, "ALERT: the store returned a key that a rotation took out of service; it is not used");
                    app.recorder
                        .counters
                        .rotations_rejected
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            return;
        }
    }
    let old = c.cell().current();
    // With nothing in memory, the key replaced is the one the inventory approved.
    let (approved_fp, approved_version) = c.approved();
    let mut row = RotationRow {
        id: format!("rot_{}", airlock_secrets::random_token(8)),
        credential: c.name.clone(),
        source: "auto".into(),
        state: "staged".into(),
        old_fingerprint: match &old {
            Some(o) => Some(o.0.fingerprint(&app.hmac)),
            None => approved_fp,
        },
        old_last4: old.as_ref().map(|o| o.0.last4()),
        old_version: match &old {
            Some(o) => o.1.clone(),
            None => approved_version,
        },
        old_ref: Some(c.reference().to_string()),
        new_fingerprint: Some(fp.clone()),
        new_last4: Some(candidate.last4()),
        new_version: version.clone(),
        started_at: now_ms(),
        ..Default::default()
    };
    let p = crate::upstream::probe(&app.client, &c, &candidate).await;
    row.tested_at = Some(now_ms());
    let retest = Instant::now() + app.creds.cache_policy.ttl;
    let first_alert = {
        let Ok(mut st) = c.auto.lock() else { return };
        st.testing = false;
        st.next_test = Some(retest);
        if p.status != "unreachable" {
            st.unreachable = 0;
        }
        let first = st.alerted.as_deref() != Some(fp.as_str());
        if p.status == "refused" {
            st.alerted = Some(fp.clone());
        }
        first
    };
    // Nothing serves (a restart found another key in the store) and the provider cannot be
    // asked: the untested key is put in service rather than none (only a refusal keeps a key
    // out when there is no other).
    let nothing_serves = old.is_none();
    match (p.status, nothing_serves) {
        ("ok", _) | ("unreachable", true) => {
            // Only if this is still the candidate (a newer one may have arrived); the
            // database first, memory after it.
            if !c
                .cell()
                .candidate()
                .is_some_and(|(k, _)| Arc::ptr_eq(&k, &candidate))
            {
                return;
            }
            let now = now_ms();
            if let Err(e) = app
                .store
                .promote_key(
                    &c.name,
                    &c.reference().to_string(),
                    &c.reference().to_string(),
                    None,
                    (&fp, &candidate.last4(), version.as_deref()),
                    now,
                )
                .await
            {
                tracing::error!(error = %e, "cannot record an automatic promotion; retried at the next refresh");
                return;
            }
            if !c.cell().promote_candidate(&candidate) {
                tracing::warn!(credential = %c.name, "another key arrived while this one was recorded; the next refresh settles it");
                return;
            }
            c.mark_seen(&fp, version);
            row.promoted_at = Some(now);
            row.state = "promoted".into();
            row.reason = Some(if p.status == "ok" {
                "a new version in the store, accepted by the provider".into()
            } else {
                format!(
                    "a key in the store other than the one last approved, in service untested because nothing else could serve ({})",
                    p.detail
                )
            });
            let _ = app.store.save_rotation(&row).await;
            step(
                &app,
                &row,
                "credential.rotation.test",
                if p.status == "ok" { "ok" } else { "failed" },
                p.detail,
            );
            step(
                &app,
                &row,
                "credential.rotation.promote",
                "ok",
                swapped(&row),
            );
            tracing::info!(credential = %c.name, "a new key version from the store was tested and promoted");
        }
        ("unreachable", false) => {
            let third = c.auto.lock().map(|mut st| {
                st.unreachable += 1;
                st.unreachable == 3
            });
            if third.unwrap_or(false) {
                tracing::error!(credential = %c.name, detail = %p.detail, "ALERT: a new key in the store cannot be tested (the provider's list-models call does not answer); the old key keeps serving");
                row.state = "failed".into();
                row.reason = Some(format!("test: {}; retried every refresh", p.detail));
                let _ = app.store.save_rotation(&row).await;
                step(&app, &row, "credential.rotation.test", "failed", p.detail);
            }
        }
        ("refused", _) if first_alert => {
            row.state = "failed".into();
            row.reason = Some(format!(
                "test: {}; the old key stays in service (retested every refresh)",
                p.detail
            ));
            let _ = app.store.save_rotation(&row).await;
            step(&app, &row, "credential.rotation.test", "failed", p.detail);
            app.recorder
                .counters
                .rotations_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(credential = %c.name, "ALERT: the store holds a new key the provider refuses; the old key keeps serving");
        }
        _ => {}
    }
}

/// `credential verify NAME --old`: is the key the last rotation replaced dead? The provider
/// must refuse it, and no request may have used it after the promotion (plus the grace for
/// requests in flight). Both true: the rotation is confirmed and a sealed old key destroyed.
pub async fn confirm_old(app: &Arc<Rotator>, name: &str) -> Result<serde_json::Value, ApiError> {
    let Some(c) = app.creds.load().get(name).cloned() else {
        return Err(api(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}`"),
        ));
    };
    let rows = app.store.rotations(name, 50).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read rotations");
        api(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database failed; see the server log".into(),
        )
    })?;
    // Only rotations of this credential as it is now (not of an earlier one of that name).
    let created = match app.store.get_credential(name).await {
        Ok(Some(r)) => r.created_at,
        Ok(None) => i64::MAX,
        Err(e) => return Err(store_error(e)),
    };
    let Some(mut row) = rows
        .into_iter()
        .filter(|r| r.started_at >= created)
        .find(|r| r.state == "promoted" || r.state == "confirmed")
    else {
        return Err(api(
            StatusCode::NOT_FOUND,
            "no_rotation",
            format!("`{name}` has no promoted rotation whose old key could be checked"),
        ));
    };
    let grace = app.grace_secs;
    let Some(old_fp) = row.old_fingerprint.clone().filter(|f| !f.is_empty()) else {
        return Err(api(
            StatusCode::CONFLICT,
            "cannot_check",
            format!("the last rotation of `{name}` does not know which key it replaced"),
        ));
    };
    // From the first promotion that took this key out of service (a later rotation cannot
    // hide uses in between), over every credential's records (a key may be shared).
    let promoted = retired(app, &c)
        .await?
        .get(&old_fp)
        .copied()
        .unwrap_or(row.promoted_at.unwrap_or(row.started_at));
    let uses = app
        .store
        .key_uses_after(&old_fp, promoted + grace as i64 * 1000)
        .await
        .map_err(store_error)?;
    // Requests answered without a record (audit.on_failure = "open") cannot be counted.
    let unrecorded = app
        .recorder
        .counters
        .audit_unrecorded
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut out = serde_json::json!({
        "credential": name,
        "rotation": row.id,
        "old": {"fingerprint": old_fp, "last4": row.old_last4, "version": row.old_version},
        "promoted_at": promoted,
        "grace_secs": grace,
        "uses_after_promotion": uses,
    });
    out["unrecorded_requests"] = unrecorded.into();
    if row.state == "confirmed" {
        out["status"] = "dead".into();
        out["confirmed"] = (uses == 0).into();
        out["detail"] = if uses == 0 {
            "confirmed earlier: the provider refused the old key".into()
        } else {
            "confirmed earlier, but the audit log now shows uses of the old key after the promotion"
                .into()
        };
        return Ok(out);
    }
    let old_ref = row
        .old_ref
        .as_deref()
        .and_then(|r| SecretRef::parse(r).ok());
    let old_key = match (&old_ref, &row.old_version) {
        (Some(r @ SecretRef::Sealed(_)), _) => app.creds.secrets.resolve(r, name).await,
        (Some(r), Some(v)) => app.creds.secrets.read_version(r, name, v).await,
        (Some(r), None) => Err(ResolveError::Invalid(format!(
            "{} keeps no earlier version of the key",
            r.store()
        ))),
        (None, _) => Err(ResolveError::Invalid("the old reference is unknown".into())),
    };
    let old_key = match old_key {
        Ok(k) if k.secret.fingerprint(&app.hmac) == old_fp => k.secret,
        Ok(_) => {
            out["status"] = "cannot_check".into();
            out["detail"] = "the store no longer returns the old key at its old version".into();
            out["confirmed"] = false.into();
            return Ok(out);
        }
        Err(e) => {
            out["status"] = "cannot_check".into();
            out["detail"] = format!("the old key cannot be read to test it: {e}").into();
            out["confirmed"] = false.into();
            return Ok(out);
        }
    };
    let p = crate::upstream::probe(&app.client, &c, &old_key).await;
    drop(old_key);
    // Proof needs both answers from the same provider now: the key in service accepted (so
    // the refusal is about the old key, not the endpoint) and the old one refused as an
    // invalid key (401; a 403 can be a missing permission on a live key).
    let current = match c.cell().current() {
        Some((s, _)) => crate::upstream::probe(&app.client, &c, &s).await,
        None => Probe {
            status: "unreachable",
            detail: "the key in service is not loaded".into(),
            http_status: None,
        },
    };
    let dead = p.status == "refused" && p.http_status == Some(401) && current.status == "ok";
    if p.status == "refused" && !dead {
        out["status"] = "inconclusive".into();
        out["detail"] = format!(
            "{}; the key in service: {} (a refusal counts only as HTTP 401 while the key in service is accepted)",
            p.detail, current.detail
        )
        .into();
        out["confirmed"] = false.into();
        step(
            app,
            &row,
            "credential.rotation.confirm",
            "failed",
            "inconclusive".into(),
        );
        return Ok(out);
    }
    out["status"] = if dead {
        "dead"
    } else if p.status == "ok" {
        "alive"
    } else {
        "unreachable"
    }
    .into();
    out["detail"] = p.detail.clone().into();
    let confirmed = dead && uses == 0 && unrecorded == 0 && !app.recorder.fail_open();
    out["confirmed"] = confirmed.into();
    if confirmed {
        row.state = "confirmed".into();
        row.confirmed_at = Some(now_ms());
        row.reason = Some(format!(
            "the provider refuses the old key and no request used it after the promotion (+{grace}s grace)"
        ));
        save(app, &row).await?;
        step(app, &row, "credential.rotation.confirm", "ok", p.detail);
        if let Some(SecretRef::Sealed(id)) = &old_ref {
            if let Err(e) = app.creds.secrets.destroy_sealed(id).await {
                tracing::warn!(error = %e, "cannot destroy the rotated-out sealed key");
            }
        }
    } else {
        let why = if !dead {
            format!(
                "the provider does not refuse the old key yet ({})",
                p.detail
            )
        } else if uses > 0 {
            format!("{uses} request(s) used the old key after the promotion")
        } else {
            "the audit log may miss uses: audit.on_failure is open or requests were answered without a record".into()
        };
        step(app, &row, "credential.rotation.confirm", "failed", why);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{key, mock_provider, Kit};

    async fn serving(kit: &Kit, name: &str) -> Option<String> {
        let c = kit.app.creds.load().get(name).cloned()?;
        let s = c.secret(&kit.app.creds, "t").await.ok()?;
        Some(s.fingerprint(&kit.app.hmac))
    }

    #[tokio::test]
    async fn a_key_the_provider_accepts_is_promoted_and_served_at_once() {
        let kit = Kit::new("").await;
        let (old, new) = (key("old"), key("new"));
        let upstream = mock_provider(&[&old, &new]).await;
        kit.sealed_credential("c", "prod", &old, &upstream).await;
        let before = serving(&kit, "c").await;
        let row = rotate(
            &kit.app.rotator,
            "c",
            NewKey::Value(Secret::new(new.clone())),
            "test",
        )
        .await
        .unwrap_or_else(|e| panic!("rotate: {}", e.message));
        assert_eq!(row.state, "promoted");
        let after = serving(&kit, "c").await;
        assert_ne!(before, after);
        assert_eq!(
            after,
            Some(Secret::new(new.clone()).fingerprint(&kit.app.hmac))
        );
        assert_eq!(row.new_fingerprint, after);
        assert_eq!(row.old_fingerprint, before);
        let steps: Vec<String> = kit
            .audit("credential.rotation.promote")
            .await
            .into_iter()
            .map(|r| r.outcome)
            .collect();
        assert_eq!(steps, ["ok"]);
        kit.assert_nowhere(&old).await;
        kit.assert_nowhere(&new).await;
    }

    #[tokio::test]
    async fn a_key_the_provider_refuses_is_not_promoted_and_the_old_one_keeps_serving() {
        let kit = Kit::new("").await;
        let (old, bad) = (key("old"), key("bad"));
        let upstream = mock_provider(&[&old]).await;
        kit.sealed_credential("c", "prod", &old, &upstream).await;
        let before = serving(&kit, "c").await;
        let row = rotate(
            &kit.app.rotator,
            "c",
            NewKey::Value(Secret::new(bad)),
            "test",
        )
        .await
        .unwrap_or_else(|e| panic!("rotate: {}", e.message));
        assert_eq!(row.state, "failed");
        assert!(row
            .reason
            .unwrap_or_default()
            .contains("the old key stays in service"));
        assert_eq!(serving(&kit, "c").await, before, "the old key still serves");
        let rows = kit.app.store.rotations("c", 10).await.unwrap_or_default();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, "failed");
        let tests: Vec<String> = kit
            .audit("credential.rotation.test")
            .await
            .into_iter()
            .map(|r| r.outcome)
            .collect();
        assert_eq!(tests, ["failed"]);
        kit.assert_nowhere(&old).await;
        assert!(kit.audit("credential.rotation.promote").await.is_empty());
    }

    #[tokio::test]
    async fn rotating_an_unknown_credential_changes_nothing() {
        let kit = Kit::new("").await;
        let e = rotate(&kit.app.rotator, "nope", NewKey::Store, "test")
            .await
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(kit
            .app
            .store
            .rotations("nope", 10)
            .await
            .unwrap_or_default()
            .is_empty());
    }
}
