//! What an incident needs: who used a credential, since when, and the lockdown's token epoch.

use crate::*;

impl Store {
    /// Requests that reached a credential in [from, to), grouped by credential, identity,
    /// token, client address and model.
    pub async fn usage_groups(&self, from: i64, to: i64) -> Result<Vec<UseGroup>> {
        let rows = sqlx::query(
            "SELECT credential, subject, token_id, client_ip, model, COUNT(*) AS n,
               CAST(COALESCE(SUM(input_tokens),0) AS BIGINT) AS i, CAST(COALESCE(SUM(output_tokens),0) AS BIGINT) AS o
             FROM usage WHERE credential IS NOT NULL AND ts >= $1 AND ts < $2
             GROUP BY credential, subject, token_id, client_ip, model",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(db("group usage"))?;
        Ok(rows
            .iter()
            .map(|r| UseGroup {
                credential: r.get("credential"),
                subject: r.get("subject"),
                token_id: r.get("token_id"),
                client_ip: r.get("client_ip"),
                model: r.get("model"),
                requests: r.get("n"),
                input_tokens: r.get("i"),
                output_tokens: r.get("o"),
            })
            .collect())
    }

    /// The identities (`subject`) or addresses (`client_ip`) that used `credential` in
    /// [from, to).
    pub async fn seen_before(
        &self,
        credential: &str,
        what: SeenColumn,
        from: i64,
        to: i64,
    ) -> Result<std::collections::HashSet<String>> {
        let col = match what {
            SeenColumn::Subject => "subject",
            SeenColumn::ClientIp => "client_ip",
        };
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT {col} AS v FROM usage WHERE credential = $1 AND ts >= $2 AND ts < $3 AND {col} IS NOT NULL"
        ))
        .bind(credential)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read earlier usage"))?;
        Ok(rows.iter().map(|r| r.get::<String, _>("v")).collect())
    }

    /// Requests and spend (millionths of a dollar) of `credential` in [from, to).
    pub async fn credential_volume(
        &self,
        credential: &str,
        from: i64,
        to: i64,
    ) -> Result<(i64, i64)> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM usage WHERE credential = $1 AND ts >= $2 AND ts < $3",
        )
        .bind(credential)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await
        .map_err(db("count usage"))?;
        let c: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(cost_micros),0) AS BIGINT) FROM audit WHERE action = 'inference' AND credential = $1 AND ts >= $2 AND ts < $3",
        )
        .bind(credential)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await
        .map_err(db("sum spend"))?;
        Ok((n, c))
    }

    /// The token root-key generation set by the last lockdown: (min id, signing id).
    pub async fn token_epoch(&self) -> Result<Option<(u32, u32)>> {
        let row = sqlx::query(
            "SELECT min_root_key_id, signing_root_key_id FROM token_epoch WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read token epoch"))?;
        Ok(row.map(|r| {
            (
                r.get::<i64, _>("min_root_key_id") as u32,
                r.get::<i64, _>("signing_root_key_id") as u32,
            )
        }))
    }

    /// Records a lockdown: tokens below `min` are refused from now on, `signing` signs; and
    /// suspends the named credentials, in one transaction.
    pub async fn lockdown(
        &self,
        min: u32,
        signing: u32,
        suspend: &[String],
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO token_epoch (id, min_root_key_id, signing_root_key_id, at, reason) VALUES (1,$1,$2,$3,$4)
             ON CONFLICT (id) DO UPDATE SET min_root_key_id = excluded.min_root_key_id,
               signing_root_key_id = excluded.signing_root_key_id, at = excluded.at, reason = excluded.reason",
        )
        .bind(i64::from(min))
        .bind(i64::from(signing))
        .bind(now_ms)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(db("record lockdown"))?;
        // In name order, as the audit writer's updates of credentials: no deadlock.
        let mut suspend: Vec<&String> = suspend.iter().collect();
        suspend.sort_unstable();
        for name in suspend {
            sqlx::query("UPDATE credentials SET suspended = 1 WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db("suspend credential"))?;
        }
        tx.commit().await.map_err(db("commit lockdown"))
    }
}
