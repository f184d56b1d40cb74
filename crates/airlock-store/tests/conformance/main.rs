//! One suite, both databases: every test here runs against a fresh SQLite file and a fresh
//! PostgreSQL database (created on the server named by `AIRLOCK_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, and dropped afterwards). Without a reachable
//! PostgreSQL the PostgreSQL half is skipped with a notice, or fails under
//! `AIRLOCK_REQUIRE_ALL=1` (CI).
//!
//! `opening.rs`: opening either database, its URL and the one-server lock; `inventory.rs`:
//! credentials, tokens, admin keys, limits, rotations; `audit.rs`: the writer and the reports it
//! feeds. This file: the harness that runs a test on both, and the rows the tests share.
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

mod audit;
mod inventory;
mod opening;
