//! Usage: reports, spend, a credential's activity and the anomaly detector's history.

use crate::*;

impl Store {
    /// What the anomaly detector learns at start: each identity's first token; for credentials
    /// (`credential`) and identities (`subject`) of forwarded requests with a valid token
    /// since `since_ms`, request and charged spend tallies per `bucket_ms`, and the distinct
    /// models the provider accepted, client addresses and hours of the day they were used
    /// with (at most a million of each).
    pub async fn anomaly_history(&self, since_ms: i64, bucket_ms: i64) -> Result<AnomalyHistory> {
        let mut h = AnomalyHistory::default();
        let read = db("read usage history");
        // An identity exists since its first token (whether or not it used it since).
        for r in sqlx::query(
            "SELECT subject AS k, MIN(created_at) AS first FROM tokens GROUP BY subject LIMIT 1000000",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(read)?
        {
            h.firsts.push((true, r.get("k"), r.get("first")));
        }
        // Summed as a float (SQLite) or a numeric (PostgreSQL), so it cannot overflow, then
        // clamped into an i64.
        let charged = self.dialect(
            "CAST(MIN(TOTAL(COALESCE(charged_nanos, cost_nanos)), 9.0e18) AS INTEGER)",
            "CAST(LEAST(COALESCE(SUM(COALESCE(charged_nanos, cost_nanos)), 0), 9.0e18) AS BIGINT)",
        );
        for col in ["credential", "subject"] {
            let identity = col == "subject";
            let live =
                format!("ts >= $1 AND {col} IS NOT NULL AND token_id IS NOT NULL AND attempts > 0");
            let tallies = sqlx::query(&format!(
                "SELECT {col} AS k, ts / $2 AS b, COUNT(*) AS n,
                        {charged} AS c
                 FROM usage WHERE {live} GROUP BY {col}, b"
            ))
            .bind(since_ms)
            .bind(bucket_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read usage history"))?;
            for r in tallies {
                h.tallies
                    .push((identity, r.get("k"), r.get("b"), r.get("n"), r.get("c")));
            }
            // What each was seen with, one dimension at a time (models the provider accepted).
            for (what, expr) in [
                ("model", "CASE WHEN status < 400 THEN model END"),
                ("ip", "client_ip"),
                ("hour", "CAST((ts / 3600000) % 24 AS TEXT)"),
            ] {
                let rows = sqlx::query(&format!(
                    "SELECT DISTINCT {col} AS k, {expr} AS v FROM usage WHERE {live} AND {expr} IS NOT NULL LIMIT 1000000"
                ))
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read usage history"))?;
                if rows.len() >= 1_000_000 {
                    h.truncated = true;
                }
                for r in rows {
                    let v: String = r.get("v");
                    let k: String = r.get("k");
                    h.seen.push(match what {
                        "model" => (identity, k, Some(v), None, None),
                        "ip" => (identity, k, None, Some(v), None),
                        _ => (identity, k, None, None, v.parse().ok()),
                    });
                }
            }
        }
        Ok(h)
    }

    /// Who and what used a credential since `since_ms`, from the audit log.
    pub async fn credential_activity(&self, name: &str, since_ms: i64) -> Result<Activity> {
        let group = |col: &'static str| {
            format!(
                "SELECT {col} AS k, COUNT(*) AS n FROM audit WHERE action = 'inference' AND credential = $1                  AND ts >= $2 AND {col} IS NOT NULL GROUP BY {col} ORDER BY n DESC, k LIMIT 100"
            )
        };
        let mut out = Activity::default();
        for (col, into) in [
            ("subject", &mut out.identities),
            ("actor", &mut out.tokens),
            ("client_ip", &mut out.client_ips),
        ] {
            let rows = sqlx::query(&group(col))
                .bind(name)
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read credential activity"))?;
            *into = rows
                .iter()
                .map(|r| Count {
                    name: r.get("k"),
                    requests: r.get("n"),
                })
                .collect();
        }
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(input_tokens),0) AS BIGINT) AS i, CAST(COALESCE(SUM(output_tokens),0) AS BIGINT) AS o,
               CAST(COALESCE(SUM(cost_micros),0) AS BIGINT) AS c FROM audit WHERE action = 'inference' AND credential = $1 AND ts >= $2",
        )
        .bind(name)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(db("read credential activity"))?;
        out.requests = r.get("n");
        out.input_tokens = r.get("i");
        out.output_tokens = r.get("o");
        out.cost_micros = r.get("c");
        Ok(out)
    }

    /// The most recent usage rows (newest first).
    pub async fn recent_usage(&self, limit: i64) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query("SELECT * FROM usage ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read usage"))?;
        Ok(rows
            .iter()
            .map(|r| UsageRow {
                ts: r.get("ts"),
                request_id: r.get("request_id"),
                token_id: r.get("token_id"),
                subject: r.get("subject"),
                env: r.get("env"),
                credential: r.get("credential"),
                provider: r.get("provider"),
                endpoint: r.get("endpoint"),
                model: r.get("model"),
                status: r.get("status"),
                outcome: r.get("outcome"),
                input_tokens: r.get("input_tokens"),
                output_tokens: r.get("output_tokens"),
                cached_tokens: r.get("cached_tokens"),
                latency_ms: r.get("latency_ms"),
                ttfb_ms: r.get("ttfb_ms"),
                stream: r.get::<i64, _>("stream") != 0,
                attempts: r.get("attempts"),
                client_ip: r.get("client_ip"),
                cost_nanos: r.get("cost_nanos"),
                project: r.get("project"),
                charged_nanos: r.get("charged_nanos"),
            })
            .collect())
    }

    /// Nano-dollars spent by `key` of a dimension since `since_ms`.
    pub async fn spent_since(&self, by: UsageDimension, key: &str, since_ms: i64) -> Result<i64> {
        let col = by.column();
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(COALESCE(charged_nanos, cost_nanos)), 0) AS BIGINT) AS c FROM usage WHERE {col} = $1 AND ts >= $2"
        );
        let r = sqlx::query(&sql)
            .bind(key)
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(db("read spend"))?;
        Ok(r.get("c"))
    }

    /// Usage grouped by one dimension (a column of `usage`, from a fixed list) and optionally
    /// by time bucket (`bucket_ms`, aligned to the Unix epoch, so days are UTC days), for
    /// `ts` in `[since_ms, until_ms)`. Rows ordered by bucket, then cost (highest first).
    pub async fn usage_report(
        &self,
        by: UsageDimension,
        since_ms: i64,
        until_ms: i64,
        bucket_ms: Option<i64>,
    ) -> Result<Vec<UsageReportRow>> {
        let col = by.column();
        let bucket = bucket_ms.unwrap_or(0);
        // The column name comes from the enum, never from the caller's text.
        let sql = format!(
            "SELECT {col} AS k, CASE WHEN $3 > 0 THEN (ts / $3) * $3 END AS b, COUNT(*) AS n,
                    CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS i, CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS o,
                    CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS ci, CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS c,
                    CAST(SUM(CASE WHEN model IS NOT NULL AND cost_nanos IS NULL
                              AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL) THEN 1 ELSE 0 END) AS BIGINT) AS unpriced
               FROM usage WHERE ts >= $1 AND ts < $2
              GROUP BY k, b ORDER BY b, c DESC, n DESC, k"
        );
        let rows = sqlx::query(&sql)
            .bind(since_ms)
            .bind(until_ms)
            .bind(bucket)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read usage"))?;
        Ok(rows
            .iter()
            .map(|r| UsageReportRow {
                key: r.get("k"),
                bucket_ms: r.get("b"),
                requests: r.get("n"),
                input_tokens: r.get("i"),
                output_tokens: r.get("o"),
                cached_tokens: r.get("ci"),
                cost_nanos: r.get("c"),
                unpriced: r.get("unpriced"),
            })
            .collect())
    }

    /// Totals of successful requests served by a credential.
    pub async fn credential_totals(&self, name: &str) -> Result<UsageTotals> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(input_tokens),0) AS BIGINT) AS i, CAST(COALESCE(SUM(output_tokens),0) AS BIGINT) AS o
             FROM usage WHERE credential = $1 AND outcome != 'refused'",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(db("usage totals"))?;
        Ok(UsageTotals {
            requests: r.get("n"),
            input_tokens: r.get("i"),
            output_tokens: r.get("o"),
        })
    }
}
