//! Secret references: where a credential's value lives. Parsed from strings such as
//! `env:OPENAI_API_KEY` or `file:/run/secrets/openai`; the value is read only when needed.

use crate::Secret;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest secret file read (keys are well under 1 KiB; this only bounds a mistake).
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Environment variables with this prefix configure airlock itself; they are never secrets a
/// credential may point at (a credential reading the server's own settings would send them to
/// whatever base URL the credential names).
pub const RESERVED_ENV_PREFIX: &str = "AIRLOCK_";

/// Where `file:` references may point. A credential's secret is sent to the credential's base
/// URL, so a reference to airlock's own key files would hand them to whoever chose that URL.
#[derive(Debug, Clone, Default)]
pub struct ReferencePolicy {
    denied: Vec<PathBuf>,
    allowed: Vec<PathBuf>,
}

impl ReferencePolicy {
    /// Files under any of `denied` are refused; when `allowed` is not empty, files must be
    /// under one of its directories. Both are resolved through symlinks when they exist.
    pub fn new(denied: &[PathBuf], allowed: &[PathBuf]) -> Self {
        let real = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        ReferencePolicy {
            denied: denied.iter().map(real).collect(),
            allowed: allowed.iter().map(real).collect(),
        }
    }

    fn permits(&self, shown: &Path, real: &Path) -> Result<(), ResolveError> {
        if self.denied.iter().any(|d| real.starts_with(d)) {
            return Err(ResolveError::Invalid(format!(
                "{} is inside airlock's own state or key directory; keep provider keys elsewhere",
                shown.display()
            )));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| real.starts_with(a)) {
            return Err(ResolveError::Invalid(format!(
                "{} is outside the directories allowed by [secrets] file_roots",
                shown.display()
            )));
        }
        Ok(())
    }
}

/// The path the open file really is, after every symlink, as the kernel sees it (no window
/// between checking a path and reading it).
fn real_path(file: &std::fs::File, path: &Path) -> std::io::Result<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let Ok(p) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            return Ok(p);
        }
    }
    let _ = file;
    std::fs::canonicalize(path)
}

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
                return Err(ResolveError::Invalid(
                    "env: needs a variable name of letters, digits and _ such as env:OPENAI_API_KEY (the text after env: is not shown, in case it was a key)".into(),
                ));
            }
            if name.to_ascii_uppercase().starts_with(RESERVED_ENV_PREFIX) {
                return Err(ResolveError::Invalid(format!(
                    "env:{RESERVED_ENV_PREFIX}* variables configure airlock and cannot hold a provider key"
                )));
            }
            return Ok(SecretRef::Env(name.to_string()));
        }
        if let Some(path) = s.strip_prefix("file:") {
            let p = PathBuf::from(path);
            if !p.is_absolute() {
                return Err(ResolveError::Invalid(
                    "file: needs an absolute path such as file:/run/secrets/openai".into(),
                ));
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

    /// Reads the secret now. `file:` references must name a regular file of at most
    /// [`MAX_SECRET_FILE`] bytes that `policy` permits (checked on the opened file).
    pub fn resolve(&self, policy: &ReferencePolicy) -> Result<Secret, ResolveError> {
        let value = match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(ResolveError::NotFound(format!(
                        "environment variable `{name}` is not set in the airlock server's environment"
                    )))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ResolveError::Invalid(format!(
                        "environment variable {name} is not valid UTF-8"
                    )))
                }
            },
            SecretRef::File(p) => read_file(p, policy)?,
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

fn read_file(p: &Path, policy: &ReferencePolicy) -> Result<String, ResolveError> {
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ResolveError::NotFound(format!("{} does not exist", p.display()))
        } else {
            ResolveError::Unavailable(format!("cannot read {}: {}", p.display(), e.kind()))
        }
    };
    // Judge the path before opening it: opening a FIFO or a device can block or have effects.
    let before = std::fs::metadata(p).map_err(io)?;
    if !before.is_file() {
        return Err(ResolveError::Invalid(format!(
            "{} is not a regular file",
            p.display()
        )));
    }
    policy.permits(p, &std::fs::canonicalize(p).map_err(io)?)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        // Never block on open, even if the path was swapped for a FIFO since the check.
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = opts.open(p).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ResolveError::Invalid(format!(
            "{} is not a regular file",
            p.display()
        )));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(ResolveError::Invalid(format!(
            "{} is larger than {} KiB; a key file holds one key",
            p.display(),
            MAX_SECRET_FILE / 1024
        )));
    }
    policy.permits(p, &real_path(&file, p).map_err(io)?)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(ResolveError::Invalid(format!(
            "{} grew past {} KiB while being read",
            p.display(),
            MAX_SECRET_FILE / 1024
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| ResolveError::Invalid(format!("{} is not valid UTF-8", p.display())))
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
            "env:AIRLOCK_ADMIN_TOKEN",
            "env:airlock_x",
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
        let s = r.resolve(&ReferencePolicy::default()).unwrap();
        assert_eq!(s.len(), 16);
        assert_eq!(s.last4(), "mnop");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            r.resolve(&ReferencePolicy::default()),
            Err(ResolveError::NotFound(_))
        ));
        std::fs::write(&p, "a\nb\n").unwrap();
        assert!(matches!(
            r.resolve(&ReferencePolicy::default()),
            Err(ResolveError::Invalid(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            r.resolve(&ReferencePolicy::default()),
            Err(ResolveError::NotFound(_))
        ));
    }

    #[test]
    fn files_in_denied_directories_refused_even_through_symlinks() {
        let dir = std::env::temp_dir().join(format!("airlock-ref-{}", crate::random_token(6)));
        let keys = dir.join("state").join("keys");
        let outside = dir.join("secrets");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(keys.join("root-1.key"), "rootkeymaterial").unwrap();
        std::fs::write(outside.join("k"), "providerkey").unwrap();
        let policy = ReferencePolicy::new(&[dir.join("state")], &[]);
        let direct = SecretRef::File(keys.join("root-1.key"));
        let err = direct.resolve(&policy).unwrap_err().to_string();
        assert!(err.contains("airlock's own state"), "{err}");
        #[cfg(unix)]
        {
            let link = outside.join("innocent");
            std::os::unix::fs::symlink(keys.join("root-1.key"), &link).unwrap();
            assert!(SecretRef::File(link).resolve(&policy).is_err());
            let dotdot = outside
                .join("..")
                .join("state")
                .join("keys")
                .join("root-1.key");
            assert!(SecretRef::File(dotdot).resolve(&policy).is_err());
        }
        assert!(SecretRef::File(outside.join("k")).resolve(&policy).is_ok());
        // An allow-list narrows further.
        let only = ReferencePolicy::new(&[], &[dir.join("elsewhere")]);
        let err = SecretRef::File(outside.join("k"))
            .resolve(&only)
            .unwrap_err();
        assert!(err.to_string().contains("file_roots"), "{err}");
        // A FIFO is refused without being opened (opening one blocks until a writer comes).
        #[cfg(unix)]
        {
            let fifo = outside.join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if made.is_ok_and(|s| s.success()) {
                let err = SecretRef::File(fifo).resolve(&policy).unwrap_err();
                assert!(err.to_string().contains("not a regular file"), "{err}");
            }
        }
        // Directories and oversized files are not key files.
        assert!(SecretRef::File(outside.clone()).resolve(&policy).is_err());
        std::fs::write(outside.join("big"), vec![b'a'; 70 * 1024]).unwrap();
        let err = SecretRef::File(outside.join("big"))
            .resolve(&policy)
            .unwrap_err();
        assert!(err.to_string().contains("KiB"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
