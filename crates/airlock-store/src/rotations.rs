//! Key rotations: each step, what replaced what, and the promotion of a new key.

use crate::*;

impl Store {
    pub(crate) fn rotation_from(r: &sqlx::any::AnyRow) -> RotationRow {
        RotationRow {
            id: r.get("id"),
            credential: r.get("credential"),
            source: r.get("source"),
            state: r.get("state"),
            reason: r.get("reason"),
            old_fingerprint: r.get("old_fingerprint"),
            old_last4: r.get("old_last4"),
            old_version: r.get("old_version"),
            old_ref: r.get("old_ref"),
            new_fingerprint: r.get("new_fingerprint"),
            new_last4: r.get("new_last4"),
            new_version: r.get("new_version"),
            started_at: r.get("started_at"),
            tested_at: r.get("tested_at"),
            promoted_at: r.get("promoted_at"),
            confirmed_at: r.get("confirmed_at"),
        }
    }

    /// Records a rotation, or updates it (same id).
    pub async fn save_rotation(&self, r: &RotationRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO rotations (id, credential, source, state, reason, old_fingerprint, old_last4,
               old_version, old_ref, new_fingerprint, new_last4, new_version, started_at, tested_at,
               promoted_at, confirmed_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason = excluded.reason,
               tested_at = excluded.tested_at, promoted_at = excluded.promoted_at,
               confirmed_at = excluded.confirmed_at",
        )
        .bind(&r.id)
        .bind(&r.credential)
        .bind(&r.source)
        .bind(&r.state)
        .bind(&r.reason)
        .bind(&r.old_fingerprint)
        .bind(&r.old_last4)
        .bind(&r.old_version)
        .bind(&r.old_ref)
        .bind(&r.new_fingerprint)
        .bind(&r.new_last4)
        .bind(&r.new_version)
        .bind(r.started_at)
        .bind(r.tested_at)
        .bind(r.promoted_at)
        .bind(r.confirmed_at)
        .execute(&self.pool)
        .await
        .map_err(db("save rotation"))?;
        Ok(())
    }

    /// Fingerprints a rotation of a credential of this name ever took out of service (never to
    /// be put back), with when each was first retired.
    pub async fn retired_keys(
        &self,
        credential: &str,
    ) -> Result<std::collections::HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT old_fingerprint AS f, MIN(promoted_at) AS t FROM rotations
             WHERE credential = $1 AND state IN ('promoted', 'confirmed') AND old_fingerprint IS NOT NULL
             GROUP BY old_fingerprint",
        )
        .bind(credential)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read retired keys"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("f"),
                    r.get::<Option<i64>, _>("t").unwrap_or(0),
                )
            })
            .collect())
    }

    /// A credential's rotations, newest first.
    pub async fn rotations(&self, credential: &str, limit: i64) -> Result<Vec<RotationRow>> {
        let rows = sqlx::query(
            "SELECT * FROM rotations WHERE credential = $1 ORDER BY started_at DESC, id DESC LIMIT $2",
        )
        .bind(credential)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list rotations"))?;
        Ok(rows.iter().map(Self::rotation_from).collect())
    }

    /// Audit records, of any credential (a key may be shared), whose request used the key with
    /// fingerprint `key` (the `key` field lists every key a request used) after `after_ms`.
    pub async fn key_uses_after(&self, key: &str, after_ms: i64) -> Result<i64> {
        let n: i64 = sqlx::query_scalar(self.dialect(
            "SELECT COUNT(*) FROM audit WHERE ts > $1 AND instr(key, $2) > 0",
            "SELECT COUNT(*) FROM audit WHERE ts > $1 AND strpos(key, $2) > 0",
        ))
        .bind(after_ms)
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .map_err(db("count key uses"))?;
        Ok(n)
    }

    /// Promotes a new key: the credential's reference (a new sealed secret stored in the same
    /// transaction, or a new pinned version), fingerprint, last 4, version and rotation time.
    /// Only if the credential still has the reference `expected_ref` (it was not removed, re-added
    /// or rotated meanwhile); `Conflict` otherwise, with nothing changed.
    pub async fn promote_key(
        &self,
        name: &str,
        expected_ref: &str,
        secret_ref: &str,
        sealed: Option<&SealedRow>,
        seen: (&str, &str, Option<&str>),
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        if let Some(s) = sealed {
            crate::credentials::insert_sealed(&mut tx, s).await?;
        }
        let r = sqlx::query(
            "UPDATE credentials SET secret_ref = $1, fingerprint = $2, last4 = $3,
               secret_version = $4, rotated_at = $5 WHERE name = $6 AND secret_ref = $7",
        )
        .bind(secret_ref)
        .bind(seen.0)
        .bind(seen.1)
        .bind(seen.2)
        .bind(now_ms)
        .bind(name)
        .bind(expected_ref)
        .execute(&mut *tx)
        .await
        .map_err(db("promote key"))?;
        if r.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "credential `{name}` changed while its key was being rotated"
            )));
        }
        tx.commit().await.map_err(db("commit promotion"))
    }
}
