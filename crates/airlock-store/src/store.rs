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

/// A store URL fit to print: the password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            let shown = if rest[..at].contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{shown}{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

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
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
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
