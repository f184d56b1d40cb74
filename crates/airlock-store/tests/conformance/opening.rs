//! Opening either database: the schemas kept alike, store URLs shown without passwords,
//! TLS required for a remote server, one server per PostgreSQL database.

use super::*;

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
