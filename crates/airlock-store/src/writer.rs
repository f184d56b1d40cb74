//! The audit writer's storage: a batch of records, usage rows and checkpoints per transaction.

use crate::*;

/// Appends audit records, usage rows and checkpoints, a batch per transaction, synchronously on
/// the calling thread (the audit writer's own thread), with cached prepared statements.
pub struct BatchWriter {
    pub(crate) inner: Writer,
}

pub(crate) enum Writer {
    /// A connection of its own: one synchronous call per batch, no hand-off per statement.
    Sqlite(rusqlite::Connection),
    /// The store's pool, driven from the writer's thread: a batch is a few multi-row INSERTs
    /// in one transaction.
    Postgres {
        pool: AnyPool,
        runtime: tokio::runtime::Handle,
    },
}

/// Rows per multi-row INSERT (PostgreSQL takes at most 65 535 parameters per statement).
const PG_ROWS_PER_INSERT: usize = 1000;

impl BatchWriter {
    /// Writes one batch in one transaction, with `head`, the signature over its last record
    /// (stored as the signed head, replacing the previous one) and, when due, a permanent
    /// `checkpoint`. Must not be called from within the async runtime (the writer runs on a
    /// thread of its own).
    pub fn write_batch(
        &mut self,
        batch: &[UsageRow],
        audit: &[Sealed],
        checkpoint: Option<&Checkpoint>,
        head: Option<&Checkpoint>,
    ) -> Result<()> {
        let conn = match &mut self.inner {
            Writer::Sqlite(conn) => conn,
            Writer::Postgres { pool, runtime } => {
                return runtime.block_on(async {
                    let mut tx = pool.begin().await.map_err(db("begin"))?;
                    pg_write(&mut tx, batch, audit, checkpoint, head).await?;
                    tx.commit().await.map_err(db("commit"))
                });
            }
        };
        let tx = conn.transaction().map_err(wdb("begin"))?;
        sqlite_write(&tx, batch, audit, checkpoint, head)?;
        tx.commit().map_err(wdb("commit"))
    }

    /// [`Storage::append`](airlock_audit::log::Storage::append): the head read, the batch
    /// sealed after it and stored, in one transaction that holds the log's write lock (SQLite:
    /// an immediate transaction; PostgreSQL: a transaction-scoped advisory lock, so that
    /// several servers take turns on one chain).
    fn append_sealed(
        &mut self,
        rows: &[UsageRow],
        seal: &mut dyn FnMut(i64, &str) -> Option<airlock_audit::log::Sealing>,
    ) -> Result<Option<airlock_audit::log::Sealing>> {
        use rusqlite::OptionalExtension;
        let conn = match &mut self.inner {
            Writer::Sqlite(conn) => conn,
            Writer::Postgres { pool, runtime } => {
                return runtime.block_on(pg_append(pool, rows, seal));
            }
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(wdb("begin"))?;
        let (seq, hash) = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(wdb("read audit head"))?
            .unwrap_or((0, airlock_audit::GENESIS.to_string()));
        let Some(sealing) = seal(seq, &hash) else {
            return Ok(None);
        };
        sqlite_write(
            &tx,
            rows,
            &sealing.records,
            sealing.checkpoint.as_ref(),
            sealing.head.as_ref(),
        )?;
        tx.commit().map_err(wdb("commit"))?;
        Ok(Some(sealing))
    }

    /// The hash of the record stored at `seq`, if any.
    pub fn record_hash(&self, seq: i64) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        match &self.inner {
            // A connection still inside a transaction would see its own uncommitted rows.
            Writer::Sqlite(conn) if !conn.is_autocommit() => Err(StoreError::Db {
                op: "read an audit record",
                source: sqlx::Error::Protocol(
                    "the writer's connection is inside a transaction".into(),
                ),
            }),
            Writer::Sqlite(conn) => conn
                .query_row("SELECT hash FROM audit WHERE seq = ?", [seq], |r| r.get(0))
                .optional()
                .map_err(wdb("read an audit record")),
            Writer::Postgres { pool, runtime } => runtime.block_on(async {
                sqlx::query_scalar("SELECT hash FROM audit WHERE seq = $1")
                    .bind(seq)
                    .fetch_optional(pool)
                    .await
                    .map_err(db("read an audit record"))
            }),
        }
    }
}

/// The SQLite half of a batch, inside the caller's transaction.
fn sqlite_write(
    tx: &rusqlite::Transaction<'_>,
    batch: &[UsageRow],
    audit: &[Sealed],
    checkpoint: Option<&Checkpoint>,
    head: Option<&Checkpoint>,
) -> Result<()> {
    use rusqlite::params;
    if let Some(h) = head {
        tx.prepare_cached(
                "INSERT INTO audit_head (id, seq, ts, head, key_id, signature) VALUES (1,?,?,?,?,?)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts, head = excluded.head,
                   key_id = excluded.key_id, signature = excluded.signature",
            )
            .and_then(|mut st| st.execute(params![h.seq, h.ts, h.head, h.key_id, h.signature]))
            .map_err(wdb("sign the head"))?;
    }
    let mut ins = tx
            .prepare_cached(
                "INSERT INTO audit (seq, ts, actor_kind, actor, subject, action, target_kind, target,
                   outcome, reason, request_id, client_ip, credential, model, status, input_tokens,
                   output_tokens, cost_micros, prev, hash, key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            )
            .map_err(wdb("append audit record"))?;
    for s in audit {
        let r = &s.record;
        ins.execute(params![
            r.seq,
            r.ts,
            r.actor_kind,
            r.actor,
            r.subject,
            r.action,
            r.target_kind,
            r.target,
            r.outcome,
            r.reason,
            r.request_id,
            r.client_ip,
            r.credential,
            r.model,
            r.status,
            r.input_tokens,
            r.output_tokens,
            r.cost_micros,
            r.prev,
            s.hash,
            r.key
        ])
        .map_err(wdb("append audit record"))?;
    }
    if let Some(c) = checkpoint {
        tx.prepare_cached(
            // A checkpoint this writer stored in a commit reported failed is not an error.
            "INSERT INTO audit_checkpoints (seq, ts, head, key_id, signature) VALUES (?,?,?,?,?)
             ON CONFLICT (seq) DO NOTHING",
        )
        .and_then(|mut st| st.execute(params![c.seq, c.ts, c.head, c.key_id, c.signature]))
        .map_err(wdb("write audit checkpoint"))?;
    }
    let mut usage = tx
            .prepare_cached(
                "INSERT INTO usage (ts, request_id, token_id, subject, env, credential, provider, endpoint, model,
                   status, outcome, input_tokens, output_tokens, cached_tokens, latency_ms, ttfb_ms, stream,
                   attempts, client_ip, cost_nanos, project, charged_nanos) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            )
            .map_err(wdb("record usage"))?;
    let mut used = tx
            .prepare_cached(
                "UPDATE credentials SET last_used_at = max(COALESCE(last_used_at, 0), ?) WHERE name = ?",
            )
            .map_err(wdb("record usage"))?;
    for u in batch {
        usage
            .execute(params![
                u.ts,
                u.request_id,
                u.token_id,
                u.subject,
                u.env,
                u.credential,
                u.provider,
                u.endpoint,
                u.model,
                u.status,
                u.outcome,
                u.input_tokens,
                u.output_tokens,
                u.cached_tokens,
                u.latency_ms,
                u.ttfb_ms,
                u.stream,
                u.attempts,
                u.client_ip,
                u.cost_nanos,
                u.project,
                u.charged_nanos
            ])
            .map_err(wdb("record usage"))?;
    }
    for (name, ts) in last_used(batch) {
        used.execute(params![ts, name])
            .map_err(wdb("record usage"))?;
    }
    Ok(())
}

/// The rows with every NUL character as U+FFFD (PostgreSQL's text refuses NUL, and a caller's
/// NUL must not hold up the batch); the rows themselves, uncopied, when none holds one.
fn nul_free(rows: &[UsageRow]) -> std::borrow::Cow<'_, [UsageRow]> {
    fn texts(u: &mut UsageRow) -> impl Iterator<Item = &mut String> {
        [&mut u.request_id, &mut u.endpoint, &mut u.outcome]
            .into_iter()
            .chain(
                [
                    &mut u.token_id,
                    &mut u.subject,
                    &mut u.env,
                    &mut u.credential,
                    &mut u.provider,
                    &mut u.model,
                    &mut u.client_ip,
                    &mut u.project,
                ]
                .into_iter()
                .flatten(),
            )
    }
    let has_nul = |u: &UsageRow| {
        [&u.request_id, &u.endpoint, &u.outcome]
            .into_iter()
            .chain(
                [
                    &u.token_id,
                    &u.subject,
                    &u.env,
                    &u.credential,
                    &u.provider,
                    &u.model,
                    &u.client_ip,
                    &u.project,
                ]
                .into_iter()
                .flatten(),
            )
            .any(|s| s.contains('\0'))
    };
    if !rows.iter().any(has_nul) {
        return std::borrow::Cow::Borrowed(rows);
    }
    let mut owned = rows.to_vec();
    for u in &mut owned {
        texts(u).for_each(airlock_audit::no_nul);
    }
    std::borrow::Cow::Owned(owned)
}

/// The credentials a batch's answered requests used, each with its latest time: one update
/// per credential per batch, in name order (as every multi-row update of credentials, so two
/// transactions never wait on each other's rows).
fn last_used(batch: &[UsageRow]) -> Vec<(&str, i64)> {
    let mut out: Vec<(&str, i64)> = Vec::new();
    for u in batch {
        if let (Some(c), true) = (&u.credential, u.status < 500 && u.outcome != "refused") {
            match out.iter_mut().find(|(n, _)| *n == c.as_str()) {
                Some(e) => e.1 = e.1.max(u.ts),
                None => out.push((c.as_str(), u.ts)),
            }
        }
    }
    out.sort_unstable();
    out
}

/// `($1,…,$cols),($cols+1,…)…` for `rows` rows: numbered placeholders, which both databases
/// read (sqlx's query builder writes `?` for the Any driver, which PostgreSQL does not).
fn values(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ",(" });
        for c in 0..cols {
            if c > 0 {
                out.push(',');
            }
            out.push_str(&format!("${}", r * cols + c + 1));
        }
        out.push(')');
    }
    out
}

/// The advisory lock every PostgreSQL writer takes, per transaction, to append to the one
/// chain ("audit" in ASCII).
const CHAIN_LOCK: i64 = 0x0061_7564_6974;

/// [`BatchWriter::append_sealed`] on PostgreSQL: the chain's lock, the head, the seal, the rows.
async fn pg_append(
    pool: &AnyPool,
    rows: &[UsageRow],
    seal: &mut dyn FnMut(i64, &str) -> Option<airlock_audit::log::Sealing>,
) -> Result<Option<airlock_audit::log::Sealing>> {
    let mut tx = pool.begin().await.map_err(db("begin"))?;
    // The head must be read after the lock is taken, whatever the server's default isolation.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *tx)
        .await
        .map_err(db("begin"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db("lock the audit chain"))?;
    let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read audit head"))?
        .map(|r| (r.get::<i64, _>("seq"), r.get::<String, _>("hash")))
        .unwrap_or((0, airlock_audit::GENESIS.to_string()));
    let Some(sealing) = seal(head.0, &head.1) else {
        return Ok(None);
    };
    pg_write(
        &mut tx,
        rows,
        &sealing.records,
        sealing.checkpoint.as_ref(),
        sealing.head.as_ref(),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(Some(sealing))
}

/// The PostgreSQL half of [`BatchWriter::write_batch`]: the same rows, multi-row INSERTs.
async fn pg_write(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch: &[UsageRow],
    audit: &[Sealed],
    checkpoint: Option<&Checkpoint>,
    head: Option<&Checkpoint>,
) -> Result<()> {
    let batch = nul_free(batch);
    let batch = &batch[..];
    if let Some(h) = head {
        sqlx::query(
            "INSERT INTO audit_head (id, seq, ts, head, key_id, signature) VALUES (1,$1,$2,$3,$4,$5)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts, head = excluded.head,
               key_id = excluded.key_id, signature = excluded.signature",
        )
        .bind(h.seq)
        .bind(h.ts)
        .bind(&h.head)
        .bind(h.key_id)
        .bind(&h.signature)
        .execute(&mut **tx)
        .await
        .map_err(db("sign the head"))?;
    }
    for chunk in audit.chunks(PG_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO audit (seq, ts, actor_kind, actor, subject, action, target_kind, target,
               outcome, reason, request_id, client_ip, credential, model, status, input_tokens,
               output_tokens, cost_micros, prev, hash, key) VALUES {}",
            values(chunk.len(), 21)
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            let r = &s.record;
            q = q
                .bind(r.seq)
                .bind(r.ts)
                .bind(&r.actor_kind)
                .bind(&r.actor)
                .bind(&r.subject)
                .bind(&r.action)
                .bind(&r.target_kind)
                .bind(&r.target)
                .bind(&r.outcome)
                .bind(&r.reason)
                .bind(&r.request_id)
                .bind(&r.client_ip)
                .bind(&r.credential)
                .bind(&r.model)
                .bind(r.status)
                .bind(r.input_tokens)
                .bind(r.output_tokens)
                .bind(r.cost_micros)
                .bind(&r.prev)
                .bind(&s.hash)
                .bind(&r.key);
        }
        q.execute(&mut **tx)
            .await
            .map_err(db("append audit record"))?;
    }
    if let Some(c) = checkpoint {
        sqlx::query(
            // A checkpoint this writer stored in a commit reported failed is not an error.
            "INSERT INTO audit_checkpoints (seq, ts, head, key_id, signature) VALUES ($1,$2,$3,$4,$5)
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(c.seq)
        .bind(c.ts)
        .bind(&c.head)
        .bind(c.key_id)
        .bind(&c.signature)
        .execute(&mut **tx)
        .await
        .map_err(db("write audit checkpoint"))?;
    }
    for chunk in batch.chunks(PG_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO usage (ts, request_id, token_id, subject, env, credential, provider, endpoint, model,
               status, outcome, input_tokens, output_tokens, cached_tokens, latency_ms, ttfb_ms, stream,
               attempts, client_ip, cost_nanos, project, charged_nanos) VALUES {}",
            values(chunk.len(), 22)
        );
        let mut q = sqlx::query(&sql);
        for u in chunk {
            q = q
                .bind(u.ts)
                .bind(&u.request_id)
                .bind(&u.token_id)
                .bind(&u.subject)
                .bind(&u.env)
                .bind(&u.credential)
                .bind(&u.provider)
                .bind(&u.endpoint)
                .bind(&u.model)
                .bind(u.status)
                .bind(&u.outcome)
                .bind(u.input_tokens)
                .bind(u.output_tokens)
                .bind(u.cached_tokens)
                .bind(u.latency_ms)
                .bind(u.ttfb_ms)
                .bind(i64::from(u.stream))
                .bind(u.attempts)
                .bind(&u.client_ip)
                .bind(u.cost_nanos)
                .bind(&u.project)
                .bind(u.charged_nanos);
        }
        q.execute(&mut **tx).await.map_err(db("record usage"))?;
    }
    for (name, ts) in last_used(batch) {
        sqlx::query(
            "UPDATE credentials SET last_used_at = GREATEST(COALESCE(last_used_at, 0), $1) WHERE name = $2",
        )
        .bind(ts)
        .bind(name)
        .execute(&mut **tx)
        .await
        .map_err(db("record usage"))?;
    }
    Ok(())
}

impl airlock_audit::log::Storage for BatchWriter {
    type Row = UsageRow;

    /// Not yet on PostgreSQL either: while one server writes each database (its server
    /// lock), a head that moved under the writer means someone else wrote to the log, and
    /// the writer must stop rather than sign over it. Sharing comes with a check that a moved
    /// head was signed by another airlock writer (issue 17).
    fn shared(&self) -> bool {
        false
    }

    fn append(
        &mut self,
        rows: &[UsageRow],
        seal: &mut dyn FnMut(i64, &str) -> Option<airlock_audit::log::Sealing>,
    ) -> std::result::Result<Option<airlock_audit::log::Sealing>, airlock_audit::log::StoreError>
    {
        Ok(self.append_sealed(rows, seal)?)
    }

    fn holds(
        &mut self,
        seq: i64,
        hash: &str,
    ) -> std::result::Result<bool, airlock_audit::log::StoreError> {
        Ok(self.record_hash(seq)?.as_deref() == Some(hash))
    }
}

impl airlock_audit::log::Row for UsageRow {
    fn mark_not_answered(&mut self) {
        if self.outcome == "ok" {
            self.outcome = "not_answered".into();
            self.status = 503;
        }
    }
}
