//! Secret references: where a credential's value lives. Parsed from strings such as
//! `env:OPENAI_API_KEY` or `file:/run/secrets/openai`; the value is read only when needed.

use crate::Secret;
use std::fmt;
use std::path::PathBuf;

/// Where a secret lives. The reference is safe to store and show; the value is not.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`: an environment variable of the airlock server process.
    Env(String),
    /// `file:/path`: a file holding the secret (trailing newline ignored), re-read on change.
    File(PathBuf),
}

/// Why a reference could not be read. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The reference string is malformed or names an unknown store.
    #[error("{0}")]
    Invalid(String),
    /// The store answered, but the secret is not there.
    #[error("{0}")]
    NotFound(String),
    /// The store could not be reached or read.
    #[error("{0}")]
    Unavailable(String),
}

const LATER: &[(&str, &str)] = &[
    ("vault://", "OpenBao/Vault KV"),
    ("aws-sm://", "AWS Secrets Manager"),
    ("exec:", "command output"),
    ("sealed:", "sealed secrets"),
];

impl SecretRef {
    /// Parses `env:NAME` or `file:/absolute/path`.
    pub fn parse(s: &str) -> Result<Self, ResolveError> {
        if let Some(name) = s.strip_prefix("env:") {
            let ok = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(ResolveError::Invalid(format!(
                    "`{s}`: env: needs a variable name such as env:OPENAI_API_KEY"
                )));
            }
            return Ok(SecretRef::Env(name.to_string()));
        }
        if let Some(path) = s.strip_prefix("file:") {
            let p = PathBuf::from(path);
            if !p.is_absolute() {
                return Err(ResolveError::Invalid(format!(
                    "`{s}`: file: needs an absolute path such as file:/run/secrets/openai"
                )));
            }
            return Ok(SecretRef::File(p));
        }
        for (prefix, what) in LATER {
            if s.starts_with(prefix) {
                return Err(ResolveError::Invalid(format!(
                    "`{prefix}` references ({what}) are not supported by this build yet; use env:NAME or file:/path"
                )));
            }
        }
        Err(ResolveError::Invalid(
            "a secret reference looks like env:NAME or file:/path (the value itself is never passed on the command line)".into(),
        ))
    }

    /// The store kind, for logs and the inventory.
    pub fn store(&self) -> &'static str {
        match self {
            SecretRef::Env(_) => "env",
            SecretRef::File(_) => "file",
        }
    }

    /// A modification stamp the cache uses to notice a changed file without re-reading it.
    pub fn version_hint(&self) -> Option<std::time::SystemTime> {
        match self {
            SecretRef::Env(_) => None,
            SecretRef::File(p) => std::fs::metadata(p).and_then(|m| m.modified()).ok(),
        }
    }

    /// Reads the secret now.
    pub fn resolve(&self) -> Result<Secret, ResolveError> {
        let value = match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(ResolveError::NotFound(format!(
                        "environment variable {name} is not set in the airlock server's environment"
                    )))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ResolveError::Invalid(format!(
                        "environment variable {name} is not valid UTF-8"
                    )))
                }
            },
            SecretRef::File(p) => match std::fs::read(p) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(s) => s,
                    Err(_) => {
                        return Err(ResolveError::Invalid(format!(
                            "{} is not valid UTF-8",
                            p.display()
                        )))
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ResolveError::NotFound(format!(
                        "{} does not exist",
                        p.display()
                    )))
                }
                Err(e) => {
                    return Err(ResolveError::Unavailable(format!(
                        "cannot read {}: {}",
                        p.display(),
                        e.kind()
                    )))
                }
            },
        };
        let mut value = value;
        let trimmed_len = value.trim_end_matches(['\n', '\r']).len();
        value.truncate(trimmed_len);
        if value.trim().is_empty() {
            return Err(ResolveError::NotFound(format!("{self} is empty")));
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(ResolveError::Invalid(format!(
                "{self} holds control characters; a key must be a single line"
            )));
        }
        Ok(Secret::new(value))
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!(
            SecretRef::parse("env:OPENAI_API_KEY").unwrap().to_string(),
            "env:OPENAI_API_KEY"
        );
        assert_eq!(SecretRef::parse("file:/run/k").unwrap().store(), "file");
        for bad in [
            "env:",
            "env:1X",
            "env:A-B",
            "file:rel/path",
            "sk-abc",
            "",
            "vault://secret/x#k",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("airlock-ref-{}", crate::random_token(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        std::fs::write(&p, "abcdefghijklmnop\n").unwrap();
        let r = SecretRef::File(p.clone());
        let s = r.resolve().unwrap();
        assert_eq!(s.len(), 16);
        assert_eq!(s.last4(), "mnop");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(r.resolve(), Err(ResolveError::NotFound(_))));
        std::fs::write(&p, "a\nb\n").unwrap();
        assert!(matches!(r.resolve(), Err(ResolveError::Invalid(_))));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(r.resolve(), Err(ResolveError::NotFound(_))));
    }
}
