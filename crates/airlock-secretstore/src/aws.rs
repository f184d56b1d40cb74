//! AWS Secrets Manager and KMS through the AWS SDK: the standard credential chain (environment,
//! profile, web identity, container and instance metadata), `AWS_REGION`, `AWS_ENDPOINT_URL`.

use crate::redact_words;
use airlock_secrets::{ResolveError, Secret};
use aws_sdk_kms::primitives::Blob;
use serde::Deserialize;
use std::time::Duration;
use zeroize::Zeroizing;

/// `[secrets.aws]`: overrides of the standard AWS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region (default: the standard chain, e.g. `AWS_REGION`).
    pub region: Option<String>,
    /// Endpoint (default: `AWS_ENDPOINT_URL` or the service's own).
    pub endpoint_url: Option<String>,
}

/// Clients for the two services.
pub struct Aws {
    sm: aws_sdk_secretsmanager::Client,
    kms: aws_sdk_kms::Client,
}

/// The encryption context bound to every data key airlock wraps under KMS.
const CONTEXT_KEY: &str = "airlock-sealed-id";

fn map_err<E, R>(what: &str, e: aws_sdk_kms::error::SdkError<E, R>) -> ResolveError
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kms::error::SdkError;
    match &e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown");
            let msg = redact_words(
                &se.err()
                    .message()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect::<String>(),
            );
            let said = format!("{what}: {code}: {msg}");
            match code {
                "ResourceNotFoundException" | "NotFoundException" => ResolveError::NotFound(said),
                "InternalServiceError"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "ThrottlingException"
                | "KMSInternalException"
                | "DependencyTimeoutException"
                | "RequestLimitExceeded"
                | "LimitExceededException" => ResolveError::Unavailable(said),
                _ => ResolveError::Refused(said),
            }
        }
        _ => ResolveError::Unavailable(format!(
            "{what}: AWS could not be reached ({})",
            redact_words(&aws_sdk_kms::error::DisplayErrorContext(&e).to_string())
                .chars()
                .take(300)
                .collect::<String>()
        )),
    }
}

impl Aws {
    /// Loads the standard configuration with airlock's HTTP client (hyper + rustls/ring).
    pub async fn load(cfg: &AwsConfig, timeout: Duration) -> Self {
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3).min(timeout))
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            );
        if let Some(r) = &cfg.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(u) = &cfg.endpoint_url {
            loader = loader.endpoint_url(u.clone());
        }
        let conf = loader.load().await;
        Aws {
            sm: aws_sdk_secretsmanager::Client::new(&conf),
            kms: aws_sdk_kms::Client::new(&conf),
        }
    }

    /// Reads a secret (one JSON field of it when `field` is set) at a staging label; returns
    /// it with its version id.
    pub async fn get_secret(
        &self,
        id: &str,
        field: Option<&str>,
        stage: Option<&str>,
    ) -> Result<(Secret, String), ResolveError> {
        self.get_secret_at(id, field, stage, None).await
    }

    /// Reads a secret at a staging label or, when `version_id` is set, at that version.
    pub async fn get_secret_at(
        &self,
        id: &str,
        field: Option<&str>,
        stage: Option<&str>,
        version_id: Option<&str>,
    ) -> Result<(Secret, String), ResolveError> {
        let what = format!("aws-sm://{id}");
        let mut req = self.sm.get_secret_value().secret_id(id);
        req = match version_id {
            Some(v) => req.version_id(v),
            None => req.version_stage(stage.unwrap_or("AWSCURRENT")),
        };
        let out = req.send().await.map_err(|e| map_err(&what, e))?;
        let version = out.version_id().unwrap_or_default().to_string();
        let Some(text) = out.secret_string else {
            return Err(ResolveError::Invalid(format!(
                "{what} holds binary data; airlock reads SecretString"
            )));
        };
        let text = Zeroizing::new(text);
        let Some(field) = field else {
            return Ok((
                airlock_secrets::value_to_secret(text.to_string(), &what)?,
                version,
            ));
        };
        let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
            ResolveError::Invalid(format!(
                "{what} is not a JSON object, so it has no field `{field}`"
            ))
        })?;
        match json.as_object_mut().and_then(|o| o.remove(field)) {
            Some(serde_json::Value::String(s)) => Ok((
                airlock_secrets::value_to_secret(s, &format!("{what}#{field}"))?,
                version,
            )),
            Some(_) => Err(ResolveError::Invalid(format!(
                "{what}#{field} is not a string"
            ))),
            None => Err(ResolveError::NotFound(format!(
                "{what} has no field `{field}`"
            ))),
        }
    }

    /// Moves `AWSCURRENT` to `new_version` (Secrets Manager then labels the old one
    /// `AWSPREVIOUS`), the promotion step of a rotation.
    pub async fn promote_version(
        &self,
        id: &str,
        new_version: &str,
        old_version: Option<&str>,
    ) -> Result<(), ResolveError> {
        let what = format!("aws-sm://{id}");
        let mut req = self
            .sm
            .update_secret_version_stage()
            .secret_id(id)
            .version_stage("AWSCURRENT")
            .move_to_version_id(new_version);
        if let Some(old) = old_version {
            req = req.remove_from_version_id(old);
        }
        req.send().await.map_err(|e| map_err(&what, e))?;
        // AWSPENDING is spent: left on the promoted version, a later rotation would stage it
        // again (and roll back past a newer AWSCURRENT).
        let _ = self
            .sm
            .update_secret_version_stage()
            .secret_id(id)
            .version_stage("AWSPENDING")
            .remove_from_version_id(new_version)
            .send()
            .await;
        Ok(())
    }

    /// A new 256-bit data key from KMS: its plaintext (which only ever travels in a response,
    /// never in a request the SDK might trace) and its wrapped form, bound to `sealed_id`.
    pub async fn kms_generate_data_key(
        &self,
        key_id: &str,
        sealed_id: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>, String), ResolveError> {
        let what = format!("aws-kms://{key_id}");
        let out = self
            .kms
            .generate_data_key()
            .key_id(key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .encryption_context(CONTEXT_KEY, sealed_id)
            .send()
            .await
            .map_err(|e| map_err(&what, e))?;
        let (Some(plain), Some(blob)) = (out.plaintext, out.ciphertext_blob) else {
            return Err(ResolveError::Unavailable(format!("{what}: no data key")));
        };
        let plain = Zeroizing::new(plain.into_inner());
        if plain.len() != 32 {
            return Err(ResolveError::Unavailable(format!(
                "{what}: the data key is not 256 bits"
            )));
        }
        Ok((plain, blob.into_inner(), out.key_id.unwrap_or_default()))
    }

    /// Unwraps a data key.
    pub async fn kms_decrypt(
        &self,
        key_id: &str,
        sealed_id: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ResolveError> {
        let what = format!("aws-kms://{key_id}");
        let out = self
            .kms
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(ciphertext.to_vec()))
            .encryption_context(CONTEXT_KEY, sealed_id)
            .send()
            .await
            .map_err(|e| map_err(&what, e))?;
        let p = out
            .plaintext
            .ok_or_else(|| ResolveError::Unavailable(format!("{what}: no plaintext")))?;
        Ok(Zeroizing::new(p.into_inner()))
    }

    /// Re-encrypts a wrapped data key under `key_id`'s current material (or moves it from
    /// another key) without revealing it.
    pub async fn kms_reencrypt(
        &self,
        from_key: &str,
        to_key: &str,
        sealed_id: &str,
        ciphertext: &[u8],
    ) -> Result<(Vec<u8>, String), ResolveError> {
        let what = format!("aws-kms://{to_key}");
        let out = self
            .kms
            .re_encrypt()
            .source_key_id(from_key)
            .destination_key_id(to_key)
            .ciphertext_blob(Blob::new(ciphertext.to_vec()))
            .source_encryption_context(CONTEXT_KEY, sealed_id)
            .destination_encryption_context(CONTEXT_KEY, sealed_id)
            .send()
            .await
            .map_err(|e| map_err(&what, e))?;
        let blob = out
            .ciphertext_blob
            .ok_or_else(|| ResolveError::Unavailable(format!("{what}: no ciphertext")))?;
        Ok((blob.into_inner(), out.key_id.unwrap_or_default()))
    }

    /// Whether KMS answers for `key_id` and the key is enabled (for `doctor`).
    pub async fn kms_check(&self, key_id: &str) -> Result<String, ResolveError> {
        let what = format!("aws-kms://{key_id}");
        let out = self
            .kms
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| map_err(&what, e))?;
        let meta = out
            .key_metadata
            .ok_or_else(|| ResolveError::Unavailable(format!("{what}: no key metadata")))?;
        if !meta.enabled {
            return Err(ResolveError::Refused(format!("{what} is disabled")));
        }
        Ok(format!("enabled ({})", meta.key_id))
    }
}
