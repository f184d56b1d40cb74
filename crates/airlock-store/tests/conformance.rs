//! One suite, both databases: every test here runs against a fresh SQLite file and a fresh
//! PostgreSQL database (created on the server named by `AIRLOCK_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, and dropped afterwards). Without a reachable
//! PostgreSQL the PostgreSQL half is skipped with a notice, or fails under
//! `AIRLOCK_REQUIRE_ALL=1` (CI).
// A test reads where its database is and whether it may skip; no configuration is involved.
#![allow(clippy::disallowed_methods)]
// Helpers of a test suite: a failure is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use airlock_store::*;
use sqlx::Executor;
use std::future::Future;

fn admin_url() -> String {
    std::env::var("AIRLOCK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// A fresh PostgreSQL database: its URL and the admin connection that drops it.
async fn fresh_postgres() -> Option<(String, sqlx::AnyPool, String)> {
    sqlx::any::install_default_drivers();
    let admin = admin_url();
    let pool = match sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(&admin)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            assert!(
                std::env::var("AIRLOCK_REQUIRE_ALL").as_deref() != Ok("1"),
                "PostgreSQL at {admin} is required (AIRLOCK_REQUIRE_ALL=1): {e}"
            );
            eprintln!("skipping the PostgreSQL half: {admin}: {e}");
            return None;
        }
    };
    let name = unique("airlock_test");
    pool.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    Some((format!("{base}/{name}"), pool, name))
}

/// Runs `test` on a fresh SQLite store, then on a fresh PostgreSQL store; the PostgreSQL
/// database is dropped whether the test passes or not.
async fn on_both<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = std::env::temp_dir().join(unique("airlock-conformance"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = Store::open_sqlite(&dir.join("t.db")).await.unwrap();
    let r = tokio::spawn(test(sqlite)).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = r {
        panic!("on SQLite: {e}");
    }
    let Some((url, admin, name)) = fresh_postgres().await else {
        return;
    };
    let pg = Store::open(&url).await.unwrap();
    assert_eq!(pg.backend(), Backend::Postgres);
    let r = tokio::spawn(test(pg.clone())).await;
    pg.close().await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    if let Err(e) = r {
        panic!("on PostgreSQL: {e}");
    }
}

fn credential(name: &str) -> CredentialRow {
    CredentialRow {
        name: name.into(),
        provider: "openai".into(),
        env: "prod".into(),
        secret_ref: "env:OPENAI_API_KEY".into(),
        base_url: None,
        models: vec!["gpt-*".into()],
        priority: 10,
        fingerprint: Some("hmac-sha256:00".into()),
        last4: Some("abcd".into()),
        created_at: 1,
        rotated_at: None,
        last_used_at: None,
        suspended: false,
        secret_version: None,
    }
}

#[tokio::test]
async fn both_schemas_have_the_same_tables_and_columns() {
    let dir = std::env::temp_dir().join(unique("airlock-schema"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = Store::open_sqlite(&dir.join("t.db"))
        .await
        .unwrap()
        .schema()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(sqlite.contains_key("credentials") && sqlite.contains_key("audit"));
    let Some((url, admin, name)) = fresh_postgres().await else {
        return;
    };
    let pg = Store::open(&url).await.unwrap();
    let schema = pg.schema().await.unwrap();
    pg.close().await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    assert_eq!(
        sqlite, schema,
        "a migration was written for one database only"
    );
}

#[tokio::test]
async fn credentials_and_sealed_secrets() {
    on_both(|s| async move {
        let c = credential("openai-prod");
        s.insert_credential(&c).await.unwrap();
        assert!(matches!(
            s.insert_credential(&c).await,
            Err(StoreError::Conflict(_))
        ));
        let mut first = credential("a-first");
        first.priority = 1;
        s.insert_credential(&first).await.unwrap();
        let names: Vec<_> = s
            .list_credentials()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a-first", "openai-prod"], "by priority, then name");
        let got = s.get_credential("openai-prod").await.unwrap().unwrap();
        assert_eq!(got, c);
        // A new key behind the same reference: rotated now, version kept.
        s.set_fingerprint("openai-prod", "hmac-sha256:11", "wxyz", Some("3"), 5)
            .await
            .unwrap();
        let got = s.get_credential("openai-prod").await.unwrap().unwrap();
        assert_eq!(
            (
                got.rotated_at,
                got.secret_version.as_deref(),
                got.last4.as_deref()
            ),
            (Some(5), Some("3"), Some("wxyz"))
        );
        // The same key again: not a rotation; no version given keeps the one known.
        s.set_fingerprint("openai-prod", "hmac-sha256:11", "wxyz", None, 9)
            .await
            .unwrap();
        let got = s.get_credential("openai-prod").await.unwrap().unwrap();
        assert_eq!(
            (got.rotated_at, got.secret_version.as_deref()),
            (Some(5), Some("3"))
        );
        assert!(s.set_suspended("openai-prod", true).await.unwrap());
        assert!(
            s.get_credential("openai-prod")
                .await
                .unwrap()
                .unwrap()
                .suspended
        );
        assert!(s.set_suspended("openai-prod", false).await.unwrap());
        assert!(
            !s.get_credential("openai-prod")
                .await
                .unwrap()
                .unwrap()
                .suspended
        );
        assert!(!s.set_suspended("nobody", true).await.unwrap());

        // A sealed secret goes in with its credential and is destroyed with it.
        let sealed = SealedRow {
            id: "s_1".into(),
            credential: "sealed-one".into(),
            kek: "keyfile:/k".into(),
            kek_version: "v1".into(),
            wrapped_key: vec![1, 2, 3],
            nonce: vec![0; 12],
            ciphertext: vec![9, 0, 255, 7],
            created_at: 1,
            rewrapped_at: None,
        };
        let sc = CredentialRow {
            secret_ref: "sealed:s_1".into(),
            ..credential("sealed-one")
        };
        s.insert_credential_with(&sc, Some(&sealed)).await.unwrap();
        // A conflicting name leaves no orphan sealed secret behind.
        let again = SealedRow {
            id: "s_2".into(),
            ..sealed.clone()
        };
        assert!(s.insert_credential_with(&sc, Some(&again)).await.is_err());
        assert!(s.get_sealed("s_2").await.unwrap().is_none());
        assert_eq!(s.list_sealed().await.unwrap().len(), 1);
        let new = SealedRow {
            kek_version: "v2".into(),
            wrapped_key: vec![4],
            rewrapped_at: Some(6),
            ..sealed.clone()
        };
        assert!(
            !s.rewrap_sealed(&[7], &new).await.unwrap(),
            "changed meanwhile"
        );
        assert!(s.rewrap_sealed(&[1, 2, 3], &new).await.unwrap());
        let got = s.get_sealed("s_1").await.unwrap().unwrap();
        assert_eq!(
            (got.kek_version.as_str(), got.wrapped_key, got.ciphertext),
            ("v2", vec![4], vec![9, 0, 255, 7])
        );
        assert!(s.delete_credential("sealed-one").await.unwrap());
        assert!(s.get_sealed("s_1").await.unwrap().is_none());
        assert!(!s.delete_credential("sealed-one").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn tokens_and_their_revocation() {
    on_both(|s| async move {
        let now_s = 1_800_000_000;
        let token = |id: &str, subject: &str, minted_by: &str, expires_at: i64| TokenRow {
            id: id.into(),
            subject: subject.into(),
            env: "prod".into(),
            models: vec!["gpt-*".into()],
            credentials: vec![],
            key_id: 1,
            created_at: now_s * 1000,
            expires_at,
            revoked_at: None,
            minted_by: minted_by.into(),
            claims: Some(serde_json::json!({"sub": subject})),
        };
        s.insert_token(&token("t1", "alice", "adm1", now_s + 60))
            .await
            .unwrap();
        s.insert_token(&token("t2", "bob", "trust:gh", now_s + 60))
            .await
            .unwrap();
        s.insert_token(&token("t3", "bob", "trust:gh", now_s + 60))
            .await
            .unwrap();
        s.insert_token(&token("old", "carol", "adm1", now_s - 1))
            .await
            .unwrap();
        let live = s.list_tokens(false, now_s).await.unwrap();
        assert_eq!(live.len(), 3);
        assert_eq!(s.list_tokens(true, now_s).await.unwrap().len(), 4);
        let t1 = live.iter().find(|t| t.id == "t1").unwrap();
        assert_eq!(t1.claims, Some(serde_json::json!({"sub": "alice"})));
        assert_eq!(t1.models, ["gpt-*"]);

        assert!(s.revoke_token("t1", 100).await.unwrap());
        assert!(s.revoke_token("t1", 200).await.unwrap(), "idempotent");
        assert!(!s.revoke_token("nope", 200).await.unwrap());
        let t1 = s.list_tokens(false, now_s).await.unwrap();
        let t1 = t1.iter().find(|t| t.id == "t1").unwrap();
        assert_eq!(
            t1.revoked_at,
            Some(100),
            "the first revocation's time stays"
        );
        assert_eq!(
            s.revoke_tokens_minted_by("trust:gh", now_s * 1000)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            s.revoke_tokens_of_subject("carol", now_s * 1000)
                .await
                .unwrap(),
            0,
            "an expired token is not revoked again"
        );
        let mut revoked = s.revoked_token_ids(now_s).await.unwrap();
        revoked.sort();
        assert_eq!(revoked, ["t1", "t2", "t3"]);
    })
    .await;
}

#[tokio::test]
async fn admin_keys_service_accounts_and_trust_policies() {
    on_both(|s| async move {
        s.insert_admin_key("o1", "first owner", "owner", "h1", None, 1)
            .await
            .unwrap();
        s.insert_admin_key("d1", "dev", "developer", "h2", Some(r#"{"env":"dev"}"#), 2)
            .await
            .unwrap();
        let k = s.admin_key("d1").await.unwrap().unwrap();
        assert_eq!((k.role.as_str(), k.hash.as_str()), ("developer", "h2"));
        assert_eq!(k.grant.as_deref(), Some(r#"{"env":"dev"}"#));
        assert!(
            !s.revoke_admin_key("o1", 5).await.unwrap(),
            "the last owner key stays"
        );
        s.insert_admin_key("o2", "second owner", "owner", "h3", None, 3)
            .await
            .unwrap();
        assert!(s.revoke_admin_key("o1", 5).await.unwrap());
        let keys = s.list_admin_keys().await.unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].revoked_at, Some(5));
        assert_eq!(keys[1].grant, Some(serde_json::json!({"env": "dev"})));

        let sa = ServiceAccountRow {
            id: "sa1".into(),
            name: "ci".into(),
            scope: serde_json::json!({"env": "prod"}),
            hash: "h".into(),
            created_at: 10,
            created_by: "o2".into(),
            last_used_at: None,
            revoked_at: None,
        };
        s.insert_service_account(&sa).await.unwrap();
        let dup = ServiceAccountRow {
            id: "sa2".into(),
            ..sa.clone()
        };
        assert!(matches!(
            s.insert_service_account(&dup).await,
            Err(StoreError::Conflict(_))
        ));
        s.touch_service_account("sa1", 100_000).await.unwrap();
        s.touch_service_account("sa1", 100_500).await.unwrap();
        let got = s.service_account("sa1").await.unwrap().unwrap();
        assert_eq!(
            got.last_used_at,
            Some(100_000),
            "touched at most once a minute"
        );
        assert_eq!(got.scope, serde_json::json!({"env": "prod"}));
        assert_eq!(
            s.revoke_service_account("ci", 7).await.unwrap().as_deref(),
            Some("sa1")
        );
        assert_eq!(s.revoke_service_account("ci", 8).await.unwrap(), None);
        // The name is free again once revoked.
        s.insert_service_account(&dup).await.unwrap();
        assert_eq!(s.list_service_accounts().await.unwrap().len(), 2);

        let p = TrustPolicyRow {
            name: "gh".into(),
            policy: serde_json::json!({"issuer": "https://example.test"}),
            created_at: 1,
            created_by: "o2".into(),
        };
        s.insert_trust_policy(&p).await.unwrap();
        assert!(matches!(
            s.insert_trust_policy(&p).await,
            Err(StoreError::Conflict(_))
        ));
        let listed = s.list_trust_policies().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].policy, p.policy);
        assert!(s.delete_trust_policy("gh").await.unwrap());
        assert!(!s.delete_trust_policy("gh").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn budgets_rate_limits_and_the_lockdown_epoch() {
    on_both(|s| async move {
        let b = BudgetRow {
            id: "b1".into(),
            kind: "identity".into(),
            key: "alice".into(),
            period: "day".into(),
            limit_nanos: 9_000_000_000_000_000_000,
            created_at: 1,
            created_by: "o".into(),
        };
        s.insert_budget(&b).await.unwrap();
        let got = s.list_budgets().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].limit_nanos, b.limit_nanos, "64-bit nano-dollars");
        assert!(s.delete_budget("b1").await.unwrap());
        assert!(!s.delete_budget("b1").await.unwrap());
        let r = RateLimitRow {
            id: "r1".into(),
            kind: "token".into(),
            key: "t1".into(),
            rpm: Some(5),
            tpm: None,
            created_at: 1,
            created_by: "o".into(),
        };
        s.insert_rate_limit(&r).await.unwrap();
        let got = s.list_rate_limits().await.unwrap();
        assert_eq!((got[0].rpm, got[0].tpm), (Some(5), None));
        assert!(s.delete_rate_limit("r1").await.unwrap());

        assert_eq!(s.token_epoch().await.unwrap(), None);
        s.insert_credential(&credential("p1")).await.unwrap();
        s.insert_credential(&credential("p2")).await.unwrap();
        s.lockdown(2, 2, &["p1".into()], Some("breach"), 10)
            .await
            .unwrap();
        s.lockdown(3, 3, &[], None, 11).await.unwrap();
        assert_eq!(s.token_epoch().await.unwrap(), Some((3, 3)));
        assert!(s.get_credential("p1").await.unwrap().unwrap().suspended);
        assert!(!s.get_credential("p2").await.unwrap().unwrap().suspended);
    })
    .await;
}

#[tokio::test]
async fn rotations_and_promotion() {
    on_both(|s| async move {
        s.insert_credential(&credential("c")).await.unwrap();
        let mut r = RotationRow {
            id: "rot_1".into(),
            credential: "c".into(),
            source: "store".into(),
            state: "staged".into(),
            old_fingerprint: Some("hmac-sha256:00".into()),
            old_last4: Some("abcd".into()),
            new_fingerprint: Some("hmac-sha256:22".into()),
            new_last4: Some("efgh".into()),
            started_at: 100,
            ..Default::default()
        };
        s.save_rotation(&r).await.unwrap();
        r.state = "promoted".into();
        r.promoted_at = Some(150);
        s.save_rotation(&r).await.unwrap();
        let list = s.rotations("c", 10).await.unwrap();
        assert_eq!(list.len(), 1, "saved again, not twice");
        assert_eq!(
            (list[0].state.as_str(), list[0].promoted_at),
            ("promoted", Some(150))
        );
        let retired = s.retired_keys("c").await.unwrap();
        assert_eq!(retired.get("hmac-sha256:00"), Some(&150));

        // Promotion only from the reference the rotation started from.
        assert!(matches!(
            s.promote_key(
                "c",
                "env:SOMETHING_ELSE",
                "env:NEW",
                None,
                ("hmac-sha256:22", "efgh", Some("4")),
                160,
            )
            .await,
            Err(StoreError::Conflict(_))
        ));
        s.promote_key(
            "c",
            "env:OPENAI_API_KEY",
            "env:NEW",
            None,
            ("hmac-sha256:22", "efgh", Some("4")),
            160,
        )
        .await
        .unwrap();
        let c = s.get_credential("c").await.unwrap().unwrap();
        assert_eq!(
            (
                c.secret_ref.as_str(),
                c.fingerprint.as_deref(),
                c.rotated_at,
                c.secret_version.as_deref()
            ),
            ("env:NEW", Some("hmac-sha256:22"), Some(160), Some("4"))
        );
    })
    .await;
}

fn inference(
    ts: i64,
    credential: &str,
    subject: &str,
    ip: &str,
    model: &str,
    cost: i64,
) -> (UsageRow, airlock_audit::Record) {
    let u = UsageRow {
        ts,
        request_id: format!("r{ts}"),
        token_id: Some(format!("tok_{subject}")),
        subject: Some(subject.into()),
        env: Some("prod".into()),
        credential: Some(credential.into()),
        provider: Some("openai".into()),
        endpoint: "/v1/chat/completions".into(),
        model: Some(model.into()),
        status: 200,
        outcome: "ok".into(),
        input_tokens: Some(3),
        output_tokens: Some(4),
        latency_ms: 5,
        stream: true,
        attempts: 1,
        client_ip: Some(ip.into()),
        cost_nanos: Some(cost),
        project: Some("p".into()),
        ..Default::default()
    };
    let a = airlock_audit::Record {
        ts,
        actor_kind: "token".into(),
        actor: u.token_id.clone(),
        subject: u.subject.clone(),
        action: "inference".into(),
        outcome: "ok".into(),
        request_id: Some(u.request_id.clone()),
        client_ip: u.client_ip.clone(),
        credential: u.credential.clone(),
        model: u.model.clone(),
        status: Some(200),
        input_tokens: Some(3),
        output_tokens: Some(4),
        cost_micros: Some(cost / 1000),
        key: Some(format!("hmac-sha256:{credential}")),
        ..Default::default()
    };
    (u, a)
}

#[tokio::test]
async fn the_audit_writer_and_the_reports_it_feeds() {
    on_both(|s| async move {
        s.insert_credential(&credential("c1")).await.unwrap();
        s.insert_credential(&credential("c2")).await.unwrap();
        let day = 86_400_000;
        let t0 = 1_800_000_000_000 / day * day;
        let uses = [
            inference(t0 + 1_000, "c1", "alice", "10.0.0.1", "gpt-4o", 2_000_000),
            inference(t0 + 2_000, "c1", "alice", "10.0.0.1", "gpt-4o", 3_000_000),
            inference(
                t0 + 3_600_000,
                "c1",
                "bob",
                "10.0.0.2",
                "gpt-4o-mini",
                1_000_000,
            ),
            inference(t0 + day + 5, "c2", "alice", "10.0.0.1", "gpt-4o", 7_000_000),
        ];
        let (rows, records): (Vec<_>, Vec<_>) = uses.into_iter().unzip();
        let mut prev = (0, airlock_audit::GENESIS.to_string());
        let sealed: Vec<Sealed> = records
            .into_iter()
            .map(|r| {
                let s = r.seal_after(prev.0, &prev.1);
                prev = (s.record.seq, s.hash.clone());
                s
            })
            .collect();
        let head = Checkpoint {
            seq: 4,
            ts: t0 + day + 6,
            head: prev.1.clone(),
            key_id: 1,
            signature: "sig-head".into(),
        };
        let cp = Checkpoint {
            signature: "sig-cp".into(),
            ..head.clone()
        };
        // The writer runs on a thread of its own, as in the server.
        assert_eq!(s.audit_head().await.unwrap().0, 0);
        let mut w = s.batch_writer().unwrap();
        tokio::task::spawn_blocking(move || {
            w.write_batch(&rows[..3], &sealed[..3], None, None).unwrap();
            w.write_batch(&rows[3..], &sealed[3..], Some(&cp), Some(&head))
                .unwrap();
            // A record with a seq already stored: refused, nothing of its batch kept.
            assert!(w.write_batch(&rows[..1], &sealed[..1], None, None).is_err());
        })
        .await
        .unwrap();

        let all = s
            .audit_records(&AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].hash, prev.1);
        assert_eq!(all[0].record.hash(), all[0].hash, "read back as written");
        let alice = s
            .audit_records(&AuditFilter {
                actor: Some("alice".into()),
                credential: Some("c1".into()),
                newest: true,
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(alice.len(), 1);
        assert_eq!(alice[0].record.seq, 2, "the newest of alice's on c1");
        assert_eq!(
            s.signed_head().await.unwrap().unwrap().signature,
            "sig-head"
        );
        assert_eq!(
            s.last_checkpoint().await.unwrap().unwrap().signature,
            "sig-cp"
        );
        assert_eq!(s.audit_checkpoints(1, 10).await.unwrap().len(), 1);
        assert_eq!(s.audit_head().await.unwrap(), prev);
        assert_eq!(
            s.key_uses_after("hmac-sha256:c1", t0 + 1_500)
                .await
                .unwrap(),
            2
        );

        let c1 = s.get_credential("c1").await.unwrap().unwrap();
        assert_eq!(c1.last_used_at, Some(t0 + 3_600_000));
        assert_eq!(
            s.credential_totals("c1").await.unwrap(),
            UsageTotals {
                requests: 3,
                input_tokens: 9,
                output_tokens: 12
            }
        );
        let a = s.credential_activity("c1", t0).await.unwrap();
        assert_eq!((a.requests, a.cost_micros), (3, 6_000));
        assert_eq!(a.identities[0].name, "alice");
        assert_eq!(a.identities[0].requests, 2);
        assert_eq!(
            s.credential_volume("c1", t0, t0 + day).await.unwrap(),
            (3, 6_000)
        );
        let groups = s.usage_groups(t0, t0 + 2 * day).await.unwrap();
        assert_eq!(groups.iter().map(|g| g.requests).sum::<i64>(), 4);
        let seen = s
            .seen_before("c1", SeenColumn::ClientIp, t0, t0 + day)
            .await
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            s.spent_since(UsageDimension::Identity, "alice", t0)
                .await
                .unwrap(),
            12_000_000
        );
        let by_day = s
            .usage_report(UsageDimension::Credential, t0, t0 + 2 * day, Some(day))
            .await
            .unwrap();
        assert_eq!(by_day.len(), 2);
        assert_eq!(
            (
                by_day[0].key.as_deref(),
                by_day[0].bucket_ms,
                by_day[0].requests,
                by_day[0].cost_nanos
            ),
            (Some("c1"), Some(t0), 3, 6_000_000)
        );
        let recent = s.recent_usage(2).await.unwrap();
        assert_eq!(recent.len(), 2);
        assert!(recent[0].stream);
        assert_eq!(recent[0].credential.as_deref(), Some("c2"), "newest first");
        let h = s.anomaly_history(t0, 3_600_000).await.unwrap();
        let c1_first_hour = h
            .tallies
            .iter()
            .find(|t| !t.0 && t.1 == "c1" && t.2 == t0 / 3_600_000)
            .unwrap();
        assert_eq!((c1_first_hour.3, c1_first_hour.4), (2, 5_000_000));
        assert!(h
            .seen
            .iter()
            .any(|x| !x.0 && x.1 == "c1" && x.3.as_deref() == Some("10.0.0.2")));
    })
    .await;
}

#[test]
fn a_store_url_is_printed_without_its_password() {
    assert_eq!(
        redact_url("postgres://airlock:s3cret@db:5432/airlock"),
        "postgres://airlock:***@db:5432/airlock"
    );
    assert_eq!(
        redact_url("postgres://airlock@db/airlock"),
        "postgres://airlock@db/airlock"
    );
    assert_eq!(redact_url("sqlite:///x/a.db"), "sqlite:///x/a.db");
    for raw in [
        "postgresql://u:p%40ss@h/d?sslmode=require",
        "postgres://u@h/d?password=hunter22&sslmode=verify-full",
        "postgres://u:hunter22@h:5432/d?application_name=x",
        "airlock:hunter22@db/x",
        "hunter22",
    ] {
        let shown = redact_url(raw);
        assert!(
            !shown.contains("hunter22") && !shown.contains("p%40ss"),
            "{raw} shown as {shown}"
        );
    }
}

#[tokio::test]
async fn a_remote_postgresql_without_sslmode_is_refused_before_connecting() {
    let e = Store::open("postgres://airlock:hunter22@db.example.test:5432/airlock")
        .await
        .err()
        .expect("refused");
    let e = e.to_string();
    assert!(e.contains("sslmode=verify-full"), "{e}");
    assert!(!e.contains("hunter22"), "{e}");
}

#[tokio::test]
async fn a_nul_from_a_caller_is_stored_as_u_fffd_and_the_chain_holds() {
    on_both(|s| async move {
        let (mut u, mut a) = inference(5, "c1", "ali\0ce", "10.0.0.1", "gpt-4o", 1);
        a.reason = Some("environment `\0` is unknown".into());
        u.outcome = "refused\0".into();
        let sealed = a.seal_after(0, airlock_audit::GENESIS);
        assert!(!sealed.record.reason.as_deref().unwrap().contains('\0'));
        let mut w = s.batch_writer().unwrap();
        let good = inference(6, "c1", "bob", "10.0.0.2", "gpt-4o", 1);
        let next = good.1.seal_after(1, &sealed.hash);
        tokio::task::spawn_blocking(move || {
            w.write_batch(&[u, good.0], &[sealed, next], None, None)
                .unwrap()
        })
        .await
        .unwrap();
        let back = s
            .audit_records(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(back.len(), 2, "the record behind it was stored too");
        assert_eq!(back[0].record.subject.as_deref(), Some("ali\u{FFFD}ce"));
        assert_eq!(back[0].record.hash(), back[0].hash, "hashed as stored");
        assert_eq!(back[1].record.prev, back[0].hash);
    })
    .await;
}

#[tokio::test]
async fn two_owners_revoking_each_other_at_once_leave_one() {
    on_both(|s| async move {
        let mut live = vec!["o0".to_string(), "o1".to_string()];
        for id in &live {
            s.insert_admin_key(id, "owner", "owner", "h", None, 1)
                .await
                .unwrap();
        }
        for round in 0..10 {
            let (a, b) = tokio::join!(
                s.revoke_admin_key(&live[0], 10 + round),
                s.revoke_admin_key(&live[1], 10 + round)
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(
                a ^ b,
                "round {round}: exactly one of the two is revoked ({a}, {b})"
            );
            let owners: Vec<String> = s
                .list_admin_keys()
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.role == "owner" && k.revoked_at.is_none())
                .map(|k| k.id)
                .collect();
            assert_eq!(owners.len(), 1, "round {round}");
            let next = format!("n{round}");
            s.insert_admin_key(&next, "owner", "owner", "h", None, 2)
                .await
                .unwrap();
            live = vec![owners[0].clone(), next];
        }
    })
    .await;
}

#[tokio::test]
async fn one_server_per_postgresql_database() {
    on_both(|s| async move {
        let first = s.server_lock().await.unwrap();
        assert!(first.is_some());
        let second = s.server_lock().await.unwrap();
        if s.backend() == Backend::Sqlite {
            // SQLite servers lock their state directory instead.
            assert!(second.is_some());
            return;
        }
        assert!(second.is_none(), "a second server is refused");
        drop(first);
        // The lock ends with its connection (the server process's death does the same).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if s.server_lock().await.unwrap().is_some() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn two_writers_append_to_one_chain_in_turn() {
    use airlock_audit::log::{Sealing, Storage};
    on_both(|s| async move {
        let writers = [s.batch_writer().unwrap(), s.batch_writer().unwrap()];
        // Not shared yet: one server per database (see BatchWriter::shared).
        assert!(!writers[0].shared());
        let threads: Vec<_> = writers
            .into_iter()
            .enumerate()
            .map(|(w, mut writer)| {
                tokio::task::spawn_blocking(move || {
                    for i in 0..40 {
                        let (_, rec) = inference(i, "c", &format!("w{w}"), "10.0.0.1", "m", 1);
                        let mut seal = |seq: i64, hash: &str| {
                            let sealed = rec.clone().seal_after(seq, hash);
                            let tip = (sealed.record.seq, sealed.hash.clone());
                            Some(Sealing {
                                records: vec![sealed],
                                checkpoint: None,
                                head: None,
                                tip,
                            })
                        };
                        let stored = writer.append(&[], &mut seal).unwrap();
                        assert!(stored.is_some());
                    }
                })
            })
            .collect();
        for t in threads {
            t.await.unwrap();
        }
        let all = s
            .audit_records(&AuditFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 80);
        let mut prev = airlock_audit::GENESIS.to_string();
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.record.seq, i as i64 + 1);
            assert_eq!(r.record.prev, prev, "a link of the chain at {}", i + 1);
            assert_eq!(r.record.hash(), r.hash);
            prev.clone_from(&r.hash);
        }
    })
    .await;
}
