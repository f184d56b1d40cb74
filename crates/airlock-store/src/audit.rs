//! Reading the audit log: pages, the signed head and checkpoints; opening its writer.

use crate::writer::Writer;
use crate::*;

impl Store {
    /// A connection of its own for the one thread that appends audit records and usage rows.
    pub fn batch_writer(&self) -> Result<BatchWriter> {
        let Some(path) = &self.path else {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| StoreError::Db {
                op: "open the audit writer",
                source: sqlx::Error::Configuration(
                    "the PostgreSQL audit writer must be opened from within the async runtime"
                        .into(),
                ),
            })?;
            return Ok(BatchWriter {
                inner: Writer::Postgres {
                    pool: self.pool.clone(),
                    runtime,
                },
            });
        };
        let conn = rusqlite::Connection::open(path).map_err(wdb("open the writer"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(wdb("open the writer"))?;
        conn.execute_batch(match self.sync {
            SyncMode::Full => {
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
            }
            SyncMode::Normal => {
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
            }
        })
        .map_err(wdb("open the writer"))?;
        Ok(BatchWriter {
            inner: Writer::Sqlite(conn),
        })
    }

    /// The last record's (seq, hash), or (0, GENESIS) for an empty log.
    pub async fn audit_head(&self) -> Result<(i64, String)> {
        let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read audit head"))?;
        Ok(row
            .map(|r| (r.get("seq"), r.get("hash")))
            .unwrap_or((0, airlock_audit::GENESIS.to_string())))
    }

    /// The signed head (the signature the writer stores with every batch), if any.
    pub async fn signed_head(&self) -> Result<Option<Checkpoint>> {
        let row =
            sqlx::query("SELECT seq, ts, head, key_id, signature FROM audit_head WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read the signed head"))?;
        Ok(row.map(|r| checkpoint_from(&r)))
    }

    /// The last checkpoint.
    pub async fn last_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let row = sqlx::query(
            "SELECT seq, ts, head, key_id, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read audit checkpoint"))?;
        Ok(row.map(|r| checkpoint_from(&r)))
    }

    /// Audit records matching `f`, in chain order.
    pub async fn audit_records(&self, f: &AuditFilter) -> Result<Vec<Sealed>> {
        // Numbered by hand: sqlx's query builder writes `?` for the Any driver.
        let mut sql = String::from("SELECT * FROM audit WHERE seq > $1");
        let mut n = 1;
        let mut next = |sql: &mut String, text: &str| {
            n += 1;
            sql.push_str(&text.replace('#', &format!("${n}")));
        };
        if f.credential.is_some() {
            next(&mut sql, " AND credential = #");
        }
        if f.actor.is_some() {
            // The same value twice: one parameter.
            next(&mut sql, " AND (actor = # OR subject = #)");
        }
        if f.action.is_some() {
            next(&mut sql, " AND action = #");
        }
        if f.since.is_some() {
            next(&mut sql, " AND ts >= #");
        }
        if f.until.is_some() {
            next(&mut sql, " AND ts < #");
        }
        next(
            &mut sql,
            if f.newest {
                " ORDER BY seq DESC LIMIT #"
            } else {
                " ORDER BY seq LIMIT #"
            },
        );
        let mut q = sqlx::query(&sql).bind(f.after_seq.unwrap_or(0));
        for v in [&f.credential, &f.actor, &f.action].into_iter().flatten() {
            q = q.bind(v);
        }
        for v in [f.since, f.until].into_iter().flatten() {
            q = q.bind(v);
        }
        let rows = q
            .bind(f.limit.clamp(1, 100_000))
            .fetch_all(&self.pool)
            .await
            .map_err(db("read audit records"))?;
        let mut out: Vec<Sealed> = rows.iter().map(sealed_from).collect();
        if f.newest {
            out.reverse();
        }
        Ok(out)
    }

    /// Checkpoints with `from <= seq <= to`, in order.
    pub async fn audit_checkpoints(&self, from: i64, to: i64) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT seq, ts, head, key_id, signature FROM audit_checkpoints WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read audit checkpoints"))?;
        Ok(rows.iter().map(checkpoint_from).collect())
    }
}

impl airlock_audit::log::Stored for Store {
    async fn last_checkpoint(
        &self,
    ) -> std::result::Result<Option<Checkpoint>, airlock_audit::log::StoreError> {
        Ok(Store::last_checkpoint(self).await?)
    }

    async fn signed_head(
        &self,
    ) -> std::result::Result<Option<Checkpoint>, airlock_audit::log::StoreError> {
        Ok(Store::signed_head(self).await?)
    }

    async fn records_after(
        &self,
        after: i64,
        limit: i64,
    ) -> std::result::Result<Vec<Sealed>, airlock_audit::log::StoreError> {
        let f = AuditFilter {
            after_seq: Some(after),
            limit,
            ..Default::default()
        };
        Ok(self.audit_records(&f).await?)
    }

    async fn checkpoints(
        &self,
        from: i64,
        to: i64,
    ) -> std::result::Result<Vec<Checkpoint>, airlock_audit::log::StoreError> {
        Ok(self.audit_checkpoints(from, to).await?)
    }
}
