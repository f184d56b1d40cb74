//! `airlock demo`: a throwaway state directory, a mock provider in the same process, two demo
//! credentials (OpenAI-compatible and Anthropic) and a demo token, printed.

use crate::{print_json, Failure};
use airlock_gateway::config::Config;
use airlock_secrets::{HmacKey, Secret};
use airlock_store::{CredentialRow, Store};
use std::time::Duration;

pub async fn run(listen: &str, json: bool) -> Result<(), Failure> {
    crate::init_logging("warn", "text");
    let dir =
        std::env::temp_dir().join(format!("airlock-demo-{}", airlock_secrets::random_token(4)));
    let init = airlock_gateway::init(&dir.join("state"), listen, None)
        .await
        .map_err(|e| Failure::usage(format!("{e:#}")))?;
    let cfg = Config::load(&init.config, std::iter::empty()).map_err(Failure::usage)?;

    // The mock provider and the key it expects: random, kept in a 0600 file in the demo state.
    let key = format!("demo-provider-key-{}", airlock_secrets::random_token(16));
    let key_file = dir.join("demo-provider.key");
    airlock_token::write_private(&key_file, key.as_bytes())
        .map_err(|e| Failure::usage(e.to_string()))?;
    let (ml, maddr) = airlock_gateway::server::bind("127.0.0.1:0")
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    let mock = airlock_providers::mock::router(airlock_providers::mock::MockOptions {
        expect_keys: vec![Secret::new(key)],
        fail_status: None,
        chunk_delay: Duration::from_millis(30),
        name: "demo".into(),
        models: vec![
            "gpt-4o-mini".into(),
            "gpt-4o".into(),
            "text-embedding-3-small".into(),
            "claude-mock-1".into(),
        ],
    });
    tokio::spawn(airlock_gateway::server::serve(
        ml,
        mock,
        Duration::from_secs(30),
        std::future::pending(),
    ));

    let store = Store::open(
        &cfg.store_connect_url()
            .map_err(|e| Failure::usage(format!("{e:#}")))?,
    )
    .await
    .map_err(|e| Failure::remote(e.to_string()))?;
    let hmac_text = std::fs::read_to_string(cfg.keys_dir().join(airlock_gateway::HMAC_KEY_FILE))
        .map_err(|e| Failure::usage(e.to_string()))?;
    let hmac = HmacKey::from_hex(&hmac_text).ok_or_else(|| Failure::usage("bad hmac key"))?;
    let secret = airlock_secrets::SecretRef::File(key_file.clone())
        .resolve(&cfg.reference_policy())
        .map_err(|e| Failure::usage(e.to_string()))?;
    for (name, provider, base, models) in [
        (
            "demo-openai",
            "openai-compatible",
            format!("http://{maddr}/v1"),
            vec!["gpt-*".to_string(), "text-embedding-*".to_string()],
        ),
        (
            "demo-anthropic",
            "anthropic",
            format!("http://{maddr}"),
            vec!["claude-*".to_string()],
        ),
    ] {
        store
            .insert_credential(&CredentialRow {
                name: name.into(),
                provider: provider.into(),
                env: "demo".into(),
                secret_ref: format!("file:{}", key_file.display()),
                base_url: Some(base),
                models,
                priority: 100,
                fingerprint: Some(secret.fingerprint(&hmac)),
                last4: Some(secret.last4()),
                created_at: airlock_gateway::util::now_ms(),
                rotated_at: None,
                last_used_at: None,
                suspended: false,
                secret_version: None,
            })
            .await
            .map_err(|e| Failure::remote(e.to_string()))?;
    }
    drop(secret);

    let keys = airlock_token::KeyRing::load(&cfg.keys_dir(), cfg.keys.root_key_id)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let minted = airlock_token::mint(
        &keys,
        &airlock_token::MintOptions {
            subject: "demo".into(),
            env: "demo".into(),
            models: vec!["*".into()],
            credentials: vec![],
            ttl: Duration::from_secs(8 * 3600),
            project: None,
        },
        std::time::SystemTime::now(),
    )
    .map_err(|e| Failure::usage(e.to_string()))?;
    store
        .insert_token(&airlock_store::TokenRow {
            id: minted.id.clone(),
            subject: "demo".into(),
            env: "demo".into(),
            models: vec!["*".into()],
            credentials: vec![],
            key_id: i64::from(minted.key_id),
            created_at: airlock_gateway::util::now_ms(),
            expires_at: minted.expires_at as i64,
            revoked_at: None,
            minted_by: "demo".into(),
            claims: None,
        })
        .await
        .map_err(|e| Failure::remote(e.to_string()))?;
    drop(store);

    let (tx, rx) = tokio::sync::oneshot::channel();
    let admin = init.admin_token.clone();
    let token = minted.token.clone();
    let dir2 = dir.join("state");
    tokio::spawn(async move {
        if let Ok(addr) = rx.await {
            let url = format!("http://{addr}");
            if json {
                print_json(
                    &serde_json::json!({"url": url, "token": token, "admin_token": admin, "state_dir": dir2, "provider_url": format!("http://{maddr}")}),
                );
            } else {
                println!(
                    "airlock demo is running at {url}  (Ctrl-C stops it and deletes {})",
                    dir2.display()
                );
                println!();
                println!("demo token (env demo, every model, 8h):");
                println!("  {token}");
                println!();
                println!("try it with the official OpenAI SDK:");
                println!("  python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"{url}/v1\", api_key=\"{token}\"); print(c.chat.completions.create(model=\"gpt-4o-mini\", messages=[{{\"role\": \"user\", \"content\": \"hi\"}}]).choices[0].message.content)'");
                println!();
                println!("or curl:");
                println!("  curl -s {url}/v1/chat/completions -H 'authorization: Bearer {token}' -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
                println!();
                println!("manage it:");
                println!("  export AIRLOCK_URL={url} AIRLOCK_ADMIN_TOKEN={admin}");
                println!(
                    "  airlock credential list; airlock token mint --model gpt-4o-mini --ttl 15m"
                );
            }
        }
    });
    let r = crate::serve(cfg, Some(tx)).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}
