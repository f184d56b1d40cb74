//! Minted tokens' metadata (never a token) and their revocation.

use crate::*;

impl Store {
    /// Records a minted token's metadata.
    pub async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, subject, env, models, credentials, key_id, created_at, expires_at, minted_by, claims)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        )
        .bind(&t.id)
        .bind(&t.subject)
        .bind(&t.env)
        .bind(to_json(&t.models))
        .bind(to_json(&t.credentials))
        .bind(t.key_id)
        .bind(t.created_at)
        .bind(t.expires_at)
                .bind(&t.minted_by)
        .bind(t.claims.as_ref().map(|c| c.to_string()))
        .execute(&self.pool)
        .await
        .map_err(db("insert token"))?;
        Ok(())
    }

    /// Tokens, newest first; expired ones only when asked.
    pub async fn list_tokens(&self, include_expired: bool, now_s: i64) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query(
            "SELECT * FROM tokens WHERE $1 OR expires_at >= $2 ORDER BY created_at DESC LIMIT 1000",
        )
        .bind(include_expired)
        .bind(now_s)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list tokens"))?;
        Ok(rows
            .iter()
            .map(|r| TokenRow {
                id: r.get("id"),
                subject: r.get("subject"),
                env: r.get("env"),
                models: json_list(r.get::<&str, _>("models")),
                credentials: json_list(r.get::<&str, _>("credentials")),
                key_id: r.get("key_id"),
                created_at: r.get("created_at"),
                expires_at: r.get("expires_at"),
                revoked_at: r.get("revoked_at"),
                minted_by: r.get("minted_by"),
                claims: r
                    .get::<Option<&str>, _>("claims")
                    .and_then(|c| serde_json::from_str(c).ok()),
            })
            .collect())
    }

    /// Marks a token revoked. Returns false when no such token was minted here.
    pub async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool> {
        let r =
            sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now_ms)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db("revoke token"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Revokes every unexpired token minted by `minted_by` (`sa:<id>`, `trust:<name>`);
    /// returns how many.
    pub async fn revoke_tokens_minted_by(&self, minted_by: &str, now_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE minted_by = $2 AND revoked_at IS NULL AND expires_at >= $3",
        )
        .bind(now_ms)
        .bind(minted_by)
        .bind(now_ms / 1000)
        .execute(&self.pool)
        .await
        .map_err(db("revoke tokens"))?;
        Ok(r.rows_affected())
    }

    /// Revokes every unexpired token of a subject (an identity an anomaly suspended); returns
    /// how many.
    pub async fn revoke_tokens_of_subject(&self, subject: &str, now_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL AND expires_at >= $3",
        )
        .bind(now_ms)
        .bind(subject)
        .bind(now_ms / 1000)
        .execute(&self.pool)
        .await
        .map_err(db("revoke tokens"))?;
        Ok(r.rows_affected())
    }

    /// Ids of revoked tokens that have not expired yet (the server keeps these in memory).
    pub async fn revoked_token_ids(&self, now_s: i64) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND expires_at >= $1")
                .bind(now_s)
                .fetch_all(&self.pool)
                .await
                .map_err(db("load revocations"))?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }
}
