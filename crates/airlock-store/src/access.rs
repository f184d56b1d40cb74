//! Who may administer and mint: admin keys, service accounts and trust policies (keyed hashes only).

use crate::*;

impl Store {
    /// Stores a new admin key's hash.
    pub async fn insert_admin_key(
        &self,
        id: &str,
        name: &str,
        role: &str,
        hash: &str,
        grant: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_keys (id, name, role, hash, grant_scope, created_at) VALUES ($1,$2,$3,$4,$5,$6)",
        )
            .bind(id)
            .bind(name)
            .bind(role)
            .bind(hash)
            .bind(grant)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db("insert admin key"))?;
        Ok(())
    }

    /// Looks up an admin key by its public id.
    pub async fn admin_key(&self, id: &str) -> Result<Option<AdminKeyRow>> {
        let row = sqlx::query(
            "SELECT id, name, role, hash, revoked_at, grant_scope FROM admin_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("get admin key"))?;
        Ok(row.map(|r| AdminKeyRow {
            id: r.get("id"),
            name: r.get("name"),
            role: r.get("role"),
            hash: r.get("hash"),
            revoked_at: r.get("revoked_at"),
            grant: r.get("grant_scope"),
        }))
    }

    /// Every admin key (no hashes), oldest first.
    pub async fn list_admin_keys(&self) -> Result<Vec<AdminKeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, revoked_at, grant_scope FROM admin_keys ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list admin keys"))?;
        Ok(rows
            .iter()
            .map(|r| AdminKeyInfo {
                id: r.get("id"),
                name: r.get("name"),
                role: r.get("role"),
                created_at: r.get("created_at"),
                revoked_at: r.get("revoked_at"),
                grant: r
                    .get::<Option<&str>, _>("grant_scope")
                    .and_then(|g| serde_json::from_str(g).ok()),
            })
            .collect())
    }

    /// Stores a new service account; `Conflict` when an active one has the name.
    pub async fn insert_service_account(&self, s: &ServiceAccountRow) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO service_accounts (id, name, scope, hash, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(&s.id)
        .bind(&s.name)
        .bind(s.scope.to_string())
        .bind(&s.hash)
        .bind(s.created_at)
        .bind(&s.created_by)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(
                format!("an active service account named `{}`", s.name),
            )),
            Err(e) => Err(db("insert service account")(e)),
        }
    }

    pub(crate) fn service_account_from(r: &sqlx::any::AnyRow) -> ServiceAccountRow {
        ServiceAccountRow {
            id: r.get("id"),
            name: r.get("name"),
            scope: serde_json::from_str(r.get::<&str, _>("scope")).unwrap_or_default(),
            hash: r.get("hash"),
            created_at: r.get("created_at"),
            created_by: r.get("created_by"),
            last_used_at: r.get("last_used_at"),
            revoked_at: r.get("revoked_at"),
        }
    }

    /// A service account by its key's public id.
    pub async fn service_account(&self, id: &str) -> Result<Option<ServiceAccountRow>> {
        let row = sqlx::query("SELECT * FROM service_accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get service account"))?;
        Ok(row.as_ref().map(Self::service_account_from))
    }

    /// Every service account, oldest first.
    pub async fn list_service_accounts(&self) -> Result<Vec<ServiceAccountRow>> {
        let rows = sqlx::query("SELECT * FROM service_accounts ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list service accounts"))?;
        Ok(rows.iter().map(Self::service_account_from).collect())
    }

    /// Revokes an active service account by id or name; returns its id, or None.
    pub async fn revoke_service_account(
        &self,
        id_or_name: &str,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "UPDATE service_accounts SET revoked_at = $1
              WHERE revoked_at IS NULL AND (id = $2 OR name = $2) RETURNING id",
        )
        .bind(now_ms)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("revoke service account"))?;
        Ok(row.map(|r| r.get("id")))
    }

    /// Notes a service account's use (at most once a minute per account).
    pub async fn touch_service_account(&self, id: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE service_accounts SET last_used_at = $1
              WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1 - 60000)",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db("note service account use"))?;
        Ok(())
    }

    /// Adds a trust policy; `Conflict` when the name is taken.
    pub async fn insert_trust_policy(&self, p: &TrustPolicyRow) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO trust_policies (name, policy, created_at, created_by) VALUES ($1,$2,$3,$4)",
        )
        .bind(&p.name)
        .bind(p.policy.to_string())
        .bind(p.created_at)
        .bind(&p.created_by)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(format!("trust policy `{}`", p.name)))
            }
            Err(e) => Err(db("insert trust policy")(e)),
        }
    }

    /// Trust policies added through the API, oldest first.
    pub async fn list_trust_policies(&self) -> Result<Vec<TrustPolicyRow>> {
        let rows = sqlx::query("SELECT * FROM trust_policies ORDER BY created_at, name")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list trust policies"))?;
        Ok(rows
            .iter()
            .map(|r| TrustPolicyRow {
                name: r.get("name"),
                policy: serde_json::from_str(r.get::<&str, _>("policy")).unwrap_or_default(),
                created_at: r.get("created_at"),
                created_by: r.get("created_by"),
            })
            .collect())
    }

    /// Removes a trust policy added through the API.
    pub async fn delete_trust_policy(&self, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM trust_policies WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db("delete trust policy"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Revokes an admin key, unless it is the last active owner key (one statement, so two
    /// revocations at once cannot leave no owner); false when nothing was revoked.
    pub async fn revoke_admin_key(&self, id: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        if self.backend == Backend::Postgres {
            // SQLite runs one write at a time; PostgreSQL does not: two revocations of two
            // owner keys would each count two owners and leave none. Locking the live owner
            // keys first makes the second wait, then count again.
            sqlx::query(
                "SELECT id FROM admin_keys WHERE role = 'owner' AND revoked_at IS NULL FOR UPDATE",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db("revoke admin key"))?;
        }
        let r = sqlx::query(
            "UPDATE admin_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL
               AND (role <> 'owner'
                    OR (SELECT COUNT(*) FROM admin_keys WHERE role = 'owner' AND revoked_at IS NULL) > 1)",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("revoke admin key"))?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(r.rows_affected() == 1)
    }
}
