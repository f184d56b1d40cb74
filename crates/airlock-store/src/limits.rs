//! Budgets and rate limits as configured (the counters live in the spend engine).

use crate::*;

impl Store {
    /// Adds a rate limit.
    pub async fn insert_rate_limit(&self, r: &RateLimitRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO rate_limits (id, kind, key, rpm, tpm, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&r.id)
        .bind(&r.kind)
        .bind(&r.key)
        .bind(r.rpm)
        .bind(r.tpm)
        .bind(r.created_at)
        .bind(&r.created_by)
        .execute(&self.pool)
        .await
        .map_err(db("insert rate limit"))?;
        Ok(())
    }

    /// Every rate limit, oldest first.
    pub async fn list_rate_limits(&self) -> Result<Vec<RateLimitRow>> {
        let rows = sqlx::query("SELECT * FROM rate_limits ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list rate limits"))?;
        Ok(rows
            .iter()
            .map(|r| RateLimitRow {
                id: r.get("id"),
                kind: r.get("kind"),
                key: r.get("key"),
                rpm: r.get("rpm"),
                tpm: r.get("tpm"),
                created_at: r.get("created_at"),
                created_by: r.get("created_by"),
            })
            .collect())
    }

    /// Removes a rate limit.
    pub async fn delete_rate_limit(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM rate_limits WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("delete rate limit"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Adds a budget.
    pub async fn insert_budget(&self, b: &BudgetRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO budgets (id, kind, key, period, limit_nanos, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&b.id)
        .bind(&b.kind)
        .bind(&b.key)
        .bind(&b.period)
        .bind(b.limit_nanos)
        .bind(b.created_at)
        .bind(&b.created_by)
        .execute(&self.pool)
        .await
        .map_err(db("insert budget"))?;
        Ok(())
    }

    /// Every budget, oldest first.
    pub async fn list_budgets(&self) -> Result<Vec<BudgetRow>> {
        let rows = sqlx::query("SELECT * FROM budgets ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list budgets"))?;
        Ok(rows
            .iter()
            .map(|r| BudgetRow {
                id: r.get("id"),
                kind: r.get("kind"),
                key: r.get("key"),
                period: r.get("period"),
                limit_nanos: r.get("limit_nanos"),
                created_at: r.get("created_at"),
                created_by: r.get("created_by"),
            })
            .collect())
    }

    /// Removes a budget.
    pub async fn delete_budget(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM budgets WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("delete budget"))?;
        Ok(r.rows_affected() > 0)
    }
}
