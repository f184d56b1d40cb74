//! Credentials and their sealed secrets: references, fingerprints and ciphertext, never a key.

use crate::*;

impl Store {
    /// Adds a credential; `Conflict` if the name is taken.
    pub async fn insert_credential(&self, c: &CredentialRow) -> Result<()> {
        self.insert_credential_with(c, None).await
    }

    /// Adds a credential and, for a sealed one, its sealed secret, in one transaction.
    pub async fn insert_credential_with(
        &self,
        c: &CredentialRow,
        sealed: Option<&SealedRow>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        if let Some(s) = sealed {
            insert_sealed(&mut tx, s).await?;
        }
        let r = sqlx::query(
            "INSERT INTO credentials (name, provider, env, secret_ref, base_url, models, priority,
               fingerprint, last4, created_at, suspended, secret_version) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,0,$11)",
        )
        .bind(&c.name)
        .bind(&c.provider)
        .bind(&c.env)
        .bind(&c.secret_ref)
        .bind(&c.base_url)
        .bind(to_json(&c.models))
        .bind(c.priority)
        .bind(&c.fingerprint)
        .bind(&c.last4)
        .bind(c.created_at)
        .bind(&c.secret_version)
        .execute(&mut *tx)
        .await;
        match r {
            Ok(_) => tx.commit().await.map_err(db("commit credential")),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(format!("credential `{}`", c.name)))
            }
            Err(e) => Err(db("insert credential")(e)),
        }
    }

    pub(crate) fn credential_from(r: &sqlx::any::AnyRow) -> CredentialRow {
        CredentialRow {
            name: r.get("name"),
            provider: r.get("provider"),
            env: r.get("env"),
            secret_ref: r.get("secret_ref"),
            base_url: r.get("base_url"),
            models: json_list(r.get::<&str, _>("models")),
            priority: r.get("priority"),
            fingerprint: r.get("fingerprint"),
            last4: r.get("last4"),
            created_at: r.get("created_at"),
            rotated_at: r.get("rotated_at"),
            last_used_at: r.get("last_used_at"),
            suspended: r.get::<i64, _>("suspended") != 0,
            secret_version: r.get("secret_version"),
        }
    }

    /// All credentials, by priority then name.
    pub async fn list_credentials(&self) -> Result<Vec<CredentialRow>> {
        let rows = sqlx::query("SELECT * FROM credentials ORDER BY priority, name")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list credentials"))?;
        Ok(rows.iter().map(Self::credential_from).collect())
    }

    /// One credential.
    pub async fn get_credential(&self, name: &str) -> Result<Option<CredentialRow>> {
        let row = sqlx::query("SELECT * FROM credentials WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get credential"))?;
        Ok(row.as_ref().map(Self::credential_from))
    }

    /// Removes a credential and its sealed secret, if any (without the ciphertext the data
    /// key is useless); false if there was none.
    pub async fn delete_credential(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query("DELETE FROM sealed_secrets WHERE credential = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("delete sealed secret"))?;
        let r = sqlx::query("DELETE FROM credentials WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("delete credential"))?;
        tx.commit().await.map_err(db("commit delete"))?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) fn sealed_from(r: &sqlx::any::AnyRow) -> SealedRow {
        SealedRow {
            id: r.get("id"),
            credential: r.get("credential"),
            kek: r.get("kek"),
            kek_version: r.get("kek_version"),
            wrapped_key: r.get("wrapped_key"),
            nonce: r.get("nonce"),
            ciphertext: r.get("ciphertext"),
            created_at: r.get("created_at"),
            rewrapped_at: r.get("rewrapped_at"),
        }
    }

    /// One sealed secret.
    pub async fn get_sealed(&self, id: &str) -> Result<Option<SealedRow>> {
        let row = sqlx::query("SELECT * FROM sealed_secrets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get sealed secret"))?;
        Ok(row.as_ref().map(Self::sealed_from))
    }

    /// Every sealed secret, oldest first.
    pub async fn list_sealed(&self) -> Result<Vec<SealedRow>> {
        let rows = sqlx::query("SELECT * FROM sealed_secrets ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list sealed secrets"))?;
        Ok(rows.iter().map(Self::sealed_from).collect())
    }

    /// Replaces a sealed secret's wrapped data key (after a KEK rotation), and its nonce and
    /// ciphertext when it was sealed again under a new data key, if the wrapped key is still
    /// the one that was rewrapped; false when it changed meanwhile.
    pub async fn rewrap_sealed(&self, old_wrapped: &[u8], new: &SealedRow) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE sealed_secrets SET kek = $1, kek_version = $2, wrapped_key = $3, nonce = $4,
               ciphertext = $5, rewrapped_at = $6 WHERE id = $7 AND wrapped_key = $8",
        )
        .bind(&new.kek)
        .bind(&new.kek_version)
        .bind(&new.wrapped_key)
        .bind(&new.nonce)
        .bind(&new.ciphertext)
        .bind(new.rewrapped_at)
        .bind(&new.id)
        .bind(old_wrapped)
        .execute(&self.pool)
        .await
        .map_err(db("rewrap sealed secret"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a newly observed fingerprint (the key behind the reference changed).
    pub async fn set_fingerprint(
        &self,
        name: &str,
        fingerprint: &str,
        last4: &str,
        version: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE credentials SET rotated_at = CASE WHEN fingerprint IS NOT NULL AND fingerprint != $1 THEN $3 ELSE rotated_at END,
               fingerprint = $1, last4 = $2, secret_version = COALESCE($5, secret_version) WHERE name = $4",
        )
        .bind(fingerprint)
        .bind(last4)
        .bind(now_ms)
        .bind(name)
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(db("update fingerprint"))?;
        Ok(())
    }

    /// Deletes one sealed secret (a rotated-out key, once confirmed dead).
    pub async fn delete_sealed(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM sealed_secrets WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("delete sealed secret"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Suspends or resumes a credential; false when there is no such credential.
    pub async fn set_suspended(&self, name: &str, suspended: bool) -> Result<bool> {
        let r = sqlx::query("UPDATE credentials SET suspended = $1 WHERE name = $2")
            .bind(i64::from(suspended))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db("suspend credential"))?;
        Ok(r.rows_affected() > 0)
    }
}

/// Stores a sealed secret inside the caller's transaction (a credential added or rotated
/// with it).
pub(crate) async fn insert_sealed(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    s: &SealedRow,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sealed_secrets (id, credential, kek, kek_version, wrapped_key, nonce,
           ciphertext, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
    )
    .bind(&s.id)
    .bind(&s.credential)
    .bind(&s.kek)
    .bind(&s.kek_version)
    .bind(&s.wrapped_key)
    .bind(&s.nonce)
    .bind(&s.ciphertext)
    .bind(s.created_at)
    .execute(&mut **tx)
    .await
    .map_err(db("insert sealed secret"))?;
    Ok(())
}
