//! The handle: opening SQLite or PostgreSQL, migrations, and what differs between the two.

use crate::*;

/// What a commit waits for (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Synced to disk: a committed audit record survives a power loss. The default.
    #[default]
    Full,
    /// Written to the operating system: survives a crash of airlock, not of the machine.
    Normal,
}

/// A store URL fit to print: a password, in the user part or as a `password` parameter,
/// replaced by `***`; text that is not a URL is not repeated at all.
pub fn redact_url(raw: &str) -> String {
    // A reference to where the URL is kept is no secret.
    if raw.starts_with("env:") || raw.starts_with("file:") {
        return raw.to_string();
    }
    let Ok(mut u) = url::Url::parse(raw) else {
        return match raw.split_once(':') {
            Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
                format!("{scheme}:<not a URL>")
            }
            _ => "<not a URL>".into(),
        };
    };
    if u.scheme().starts_with("sqlite") {
        return raw.to_string();
    }
    if u.host_str().is_none_or(str::is_empty) {
        // Not host-shaped (`user:password@host` without `//`): nothing in it is safe to show.
        return format!("{}:<not shown>", u.scheme());
    }
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A PostgreSQL URL for another machine must say how its connection is protected: sqlx's
/// default (`prefer`) checks no certificate and falls back to plain text, and whoever can
/// rewrite the `credentials` table decides where provider keys are sent.
fn check_tls(raw: &str) -> Result<()> {
    let refuse = |m: String| StoreError::Db {
        op: "open",
        source: sqlx::Error::Configuration(m.into()),
    };
    let u = url::Url::parse(raw).map_err(|_| refuse("store.url is not a URL".into()))?;
    let local = match u.host() {
        None => true,
        // `postgres:` is not a scheme the URL standard knows, so its host is kept as text.
        Some(url::Host::Domain(d)) => {
            d == "localhost"
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    let socket = u
        .query_pairs()
        .any(|(k, v)| k == "host" && v.starts_with('/'));
    let sslmode = u.query_pairs().any(|(k, _)| k == "sslmode");
    if local || socket || sslmode {
        return Ok(());
    }
    Err(refuse(format!(
        "store.url {} names a PostgreSQL server on another machine without sslmode: add \
         ?sslmode=verify-full (its certificate checked; sslrootcert=/path for a private CA), \
         or choose another sslmode explicitly",
        redact_url(raw)
    )))
}

/// The advisory lock key of the one-server lock ("airlock" in ASCII).
const SERVER_LOCK: i64 = 0x0061_6972_6c6f_636b;

/// Held while a server writes a PostgreSQL database (see [`Store::server_lock`]).
pub struct ServerLock(#[allow(dead_code)] Option<std::sync::Mutex<sqlx::AnyConnection>>);

/// Which database a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file on this machine (the embedded default).
    Sqlite,
    /// A PostgreSQL server, which several airlock servers may share.
    Postgres,
}

/// The database handle (cheap to clone). Queries are written once, in SQL both databases
/// read the same way (`$N` parameters, `CAST(SUM(..) AS BIGINT)`, integers for booleans);
/// the few that differ pick their text with [`Store::dialect`].
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    /// The SQLite file (the audit writer opens its own connection to it).
    pub(crate) path: Option<std::path::PathBuf>,
    pub(crate) sync: SyncMode,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies migrations, with
    /// every commit synced to disk.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        Self::open_sqlite_with(path, SyncMode::Full).await
    }

    /// As [`Store::open_sqlite`], choosing what a commit waits for.
    pub async fn open_sqlite_with(path: &Path, sync: SyncMode) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let synchronous = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        // What SqliteConnectOptions would set, as statements: the Any driver takes a URL only.
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;"
        );
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let pragmas = pragmas.clone();
                Box::pin(async move {
                    conn.execute(pragmas.as_str()).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(db("open"))?;
        SQLITE.run(&pool).await.map_err(|e| StoreError::Db {
            op: "migrate",
            source: e.into(),
        })?;
        Ok(Store {
            pool,
            backend: Backend::Sqlite,
            path: Some(path.to_path_buf()),
            sync,
        })
    }

    /// Opens a PostgreSQL database (`postgres://user@host:port/db`) and applies migrations.
    /// Several servers may start at once: the migrator holds an advisory lock while it runs,
    /// so each migration runs once.
    pub async fn open_postgres(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        check_tls(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // A commit is durable when it returns, whatever the server's default; a
                    // hung statement or lock ends in an error (and a refusal), not a hang.
                    conn.execute(
                        "SET synchronous_commit = on; SET statement_timeout = '60s'; \
                         SET lock_timeout = '10s'; SET idle_in_transaction_session_timeout = '15s'",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(db("open"))?;
        POSTGRES.run(&pool).await.map_err(|e| StoreError::Db {
            op: "migrate",
            source: e.into(),
        })?;
        Ok(Store {
            pool,
            backend: Backend::Postgres,
            path: None,
            sync: SyncMode::Full,
        })
    }

    /// Opens from a store URL: `postgres://…` (or `postgresql://…`), `sqlite:///abs/path.db`
    /// or a bare path.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, SyncMode::Full).await
    }

    /// As [`Store::open`], choosing what a commit waits for (SQLite only; PostgreSQL waits for
    /// its own `synchronous_commit`).
    pub async fn open_with(url: &str, sync: SyncMode) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.contains('?') || path.contains(":memory:") || path.is_empty() {
            // The audit writer opens the same file with a connection of its own.
            return Err(StoreError::Db {
                op: "open",
                source: sqlx::Error::Configuration(
                    "store.url must name a database file, without query parameters".into(),
                ),
            });
        }
        Self::open_sqlite_with(Path::new(path), sync).await
    }

    /// Every table with its columns, sorted (the conformance tests hold the two schemas to
    /// the same shape).
    pub async fn schema(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        let sql = self.dialect(
            "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p
              WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx_%'",
            "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx_%'",
        );
        let rows = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read the schema"))?;
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for r in rows {
            out.entry(r.get("t")).or_default().push(r.get("c"));
        }
        for cols in out.values_mut() {
            cols.sort();
        }
        Ok(out)
    }

    /// Closes every connection (waiting for those in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// On PostgreSQL, takes the database's one-server lock (a session advisory lock, held by a
    /// connection of its own until the returned guard is dropped or the process dies); `None`
    /// if another server holds it. Until several replicas share one audit chain, one server
    /// writes each database's log. SQLite servers lock their state directory instead: always
    /// `Some` there.
    pub async fn server_lock(&self) -> Result<Option<ServerLock>> {
        if self.backend != Backend::Postgres {
            return Ok(Some(ServerLock(None)));
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("take the server lock"))?
            .detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SERVER_LOCK)
            .fetch_one(&mut conn)
            .await
            .map_err(db("take the server lock"))?;
        Ok(got.then(|| ServerLock(Some(std::sync::Mutex::new(conn)))))
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The statement for this database, where the two differ.
    pub(crate) fn dialect(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        }
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}
