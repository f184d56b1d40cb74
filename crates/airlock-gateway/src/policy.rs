//! Authorization of one request against one credential. [`Authorized`] can only be built
//! here, and the upstream request builder takes one, so nothing reaches a provider without
//! passing this function. Invariant I4 (environments never cross) is this function's first
//! line; the token's own Datalog repeats the check as a second line of defence.

use crate::credentials::Credential;
use airlock_token::{Request, TokenError, Verified, Verifier};
use std::sync::Arc;
use std::time::SystemTime;

/// Proof that a verified token may use a credential for a model.
pub struct Authorized {
    credential: Arc<Credential>,
    token: Arc<Verified>,
}

impl Authorized {
    /// The credential that may serve the request.
    pub fn credential(&self) -> &Arc<Credential> {
        &self.credential
    }

    /// The token that was checked.
    pub fn token(&self) -> &Arc<Verified> {
        &self.token
    }
}

/// Decides whether `token` may use `cred` for `model`.
pub fn authorize(
    verifier: &Verifier,
    token: &Arc<Verified>,
    cred: &Arc<Credential>,
    model: &str,
    now: SystemTime,
) -> Result<Authorized, TokenError> {
    if cred.env != token.env {
        return Err(TokenError::Denied(format!(
            "token is for environment `{}`; credential `{}` belongs to environment `{}` and environments never cross",
            token.env, cred.name, cred.env
        )));
    }
    verifier.authorize(
        token,
        Request {
            model,
            credential: &cred.name,
            credential_env: &cred.env,
        },
        now,
    )?;
    Ok(Authorized {
        credential: cred.clone(),
        token: token.clone(),
    })
}
