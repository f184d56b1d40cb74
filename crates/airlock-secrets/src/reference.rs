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

/// Every prefix of variables a credential may not read and an `exec:` command does not get:
/// airlock's own settings and the secret stores' own credentials (a Vault token or AWS keys
/// sent to a provider's base URL would open every secret behind them).
pub const RESERVED_ENV_PREFIXES: &[&str] = &[RESERVED_ENV_PREFIX, "VAULT_", "BAO_", "AWS_"];

/// Where `file:` references may point. A credential's secret is sent to the credential's base
/// URL, so a reference to airlock's own key files would hand them to whoever chose that URL.
#[derive(Debug, Clone, Default)]
pub struct ReferencePolicy {
    denied: Vec<PathBuf>,
    allowed: Vec<PathBuf>,
    reserved_env: Vec<String>,
}

/// `p` with symlinks resolved as far as it exists: the deepest existing ancestor is
/// canonicalised and the rest appended (a denied path created after startup, or through a
/// symlinked parent such as `/var/run`, is still recognised).
fn resolve_existing(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let mut rest = Vec::new();
    let mut cur = p.to_path_buf();
    while let Some(parent) = cur.parent().map(Path::to_path_buf) {
        if let Some(name) = cur.file_name() {
            rest.push(name.to_os_string());
        }
        if let Ok(mut c) = std::fs::canonicalize(&parent) {
            for n in rest.iter().rev() {
                c.push(n);
            }
            return c;
        }
        cur = parent;
    }
    p.to_path_buf()
}

impl ReferencePolicy {
    /// Files under any of `denied` are refused; when `allowed` is not empty, files must be
    /// under one of its directories. Both are resolved through symlinks when they exist.
    pub fn new(denied: &[PathBuf], allowed: &[PathBuf]) -> Self {
        let real = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        ReferencePolicy {
            denied: denied.to_vec(),
            allowed: allowed.iter().map(real).collect(),
            reserved_env: Vec::new(),
        }
    }

    /// Also refuses `env:` references to these variables (the ones passed to `exec:`
    /// commands, which hold a password manager's own credentials).
    pub fn with_reserved_env(mut self, names: &[String]) -> Self {
        self.reserved_env = names.iter().map(|n| n.to_ascii_uppercase()).collect();
        self
    }

    fn permits(&self, shown: &Path, real: &Path) -> Result<(), ResolveError> {
        // Resolved at each check: a denied file may appear, or move behind a symlink, later.
        if self
            .denied
            .iter()
            .any(|d| real.starts_with(d) || real.starts_with(resolve_existing(d)))
        {
            return Err(ResolveError::Invalid(format!(
                "{} is inside airlock's own state or key directory, or holds a secret store's own credentials; keep provider keys elsewhere",
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
    /// `vault://MOUNT/PATH#FIELD[?version=N]`: a field of an OpenBao/Vault KV v2 secret; the
    /// latest version unless one is pinned.
    Vault {
        /// The KV v2 mount, e.g. `secret`.
        mount: String,
        /// The secret's path under the mount.
        path: String,
        /// The field holding the key.
        field: String,
        /// A pinned version.
        version: Option<u64>,
    },
    /// `aws-sm://SECRET_ID[#JSON_FIELD][?stage=LABEL]`: AWS Secrets Manager, `AWSCURRENT`
    /// unless another staging label is named; the whole `SecretString` when no field is given.
    AwsSm {
        /// Name or ARN.
        id: String,
        /// A field of a JSON `SecretString`.
        field: Option<String>,
        /// A staging label other than `AWSCURRENT`.
        stage: Option<String>,
    },
    /// `exec:PROGRAM ARG…`: a command run without a shell (words split like a shell would,
    /// quotes allowed), whose standard output is the secret.
    Exec(Vec<String>),
    /// `sealed:ID`: kept by airlock, envelope-encrypted under the configured KEK.
    Sealed(String),
}

/// Why a reference could not be read. Never contains the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The reference string is malformed or names an unknown store.
    #[error("{0}")]
    Invalid(String),
    /// The store answered, but the secret is not there.
    #[error("{0}")]
    NotFound(String),
    /// The store answered and refused: access denied, the key-encryption key disabled or
    /// revoked. A cached value is dropped at once (the customer withdrew it).
    #[error("{0}")]
    Refused(String),
    /// The store could not be reached or read.
    #[error("{0}")]
    Unavailable(String),
}

impl ResolveError {
    /// Whether the store gave a definite answer (the secret is gone, refused or malformed),
    /// as opposed to not answering: a cached value may be served on only while a store is down.
    pub fn is_definite(&self) -> bool {
        !matches!(self, ResolveError::Unavailable(_))
    }
}

/// Characters allowed in a store path, field, mount or id (no spaces, quotes, `?`, `#`).
fn plain(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || extra.contains(&c)
        })
}

/// Splits `rest` into the part before `?…`/`#…` and the named query and fragment.
fn split_query_fragment(rest: &str) -> (&str, Option<&str>, Option<&str>) {
    let (before_frag, frag) = match rest.split_once('#') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    // The query may stand before or after the fragment: `id?stage=X#f` or `id#f?stage=X`.
    let (main, query) = match before_frag.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (before_frag, None),
    };
    match (query, frag.and_then(|f| f.split_once('?'))) {
        (None, Some((f, q))) => (main, Some(q), Some(f)),
        _ => (main, query, frag),
    }
}

fn query_value<'a>(
    query: Option<&'a str>,
    name: &str,
    what: &str,
) -> Result<Option<&'a str>, ResolveError> {
    let Some(q) = query else { return Ok(None) };
    let mut found = None;
    for pair in q.split('&') {
        match pair.split_once('=') {
            Some((k, v)) if k == name && found.is_none() => found = Some(v),
            _ => {
                return Err(ResolveError::Invalid(format!(
                    "{what} takes only ?{name}=…"
                )))
            }
        }
    }
    Ok(found)
}

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
            let upper = name.to_ascii_uppercase();
            if let Some(p) = RESERVED_ENV_PREFIXES.iter().find(|p| upper.starts_with(*p)) {
                return Err(ResolveError::Invalid(format!(
                    "env:{p}* variables configure airlock or its secret stores and cannot hold a provider key"
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
        // A reference is stored and shown: one that holds a key would copy the key everywhere.
        if crate::looks_like_key(s) && !s.starts_with("sealed:") {
            return Err(ResolveError::Invalid(
                "this reference holds something that looks like a key; a reference names where the key lives (the key itself goes in the store, or through --secret-stdin)".into(),
            ));
        }
        if let Some(rest) = s.strip_prefix("vault://") {
            return Self::parse_vault(rest);
        }
        if let Some(rest) = s.strip_prefix("aws-sm://") {
            return Self::parse_aws_sm(rest);
        }
        if let Some(cmd) = s.strip_prefix("exec:") {
            let argv = shell_words::split(cmd)
                .map_err(|_| ResolveError::Invalid("exec: has an unmatched quote".into()))?;
            if argv.is_empty() || argv[0].is_empty() {
                return Err(ResolveError::Invalid(
                    "exec: needs a command, e.g. exec:op read op://ai/openai/credential".into(),
                ));
            }
            return Ok(SecretRef::Exec(argv));
        }
        if let Some(id) = s.strip_prefix("sealed:") {
            if !plain(id, &[]) || id.len() > 64 {
                return Err(ResolveError::Invalid(
                    "sealed: takes the id airlock gave the sealed secret (use --secret-stdin to seal a new one)".into(),
                ));
            }
            return Ok(SecretRef::Sealed(id.to_string()));
        }
        Err(ResolveError::Invalid(
            "a secret reference looks like env:NAME, file:/path, exec:COMMAND, vault://MOUNT/PATH#FIELD, aws-sm://SECRET_ID#FIELD or sealed:ID (the value itself is never passed on the command line)".into(),
        ))
    }

    fn parse_vault(rest: &str) -> Result<Self, ResolveError> {
        const HELP: &str = "a Vault reference looks like vault://MOUNT/PATH#FIELD (KV v2), e.g. vault://secret/ai/openai#api_key, optionally ?version=N";
        let (main, query, field) = split_query_fragment(rest);
        let (mount, path) = main
            .split_once('/')
            .ok_or_else(|| ResolveError::Invalid(HELP.into()))?;
        let field = field.ok_or_else(|| ResolveError::Invalid(HELP.into()))?;
        let segments_ok = path
            .split('/')
            .all(|seg| plain(seg, &[]) && seg != "." && seg != "..");
        if !plain(mount, &[]) || mount == "." || mount == ".." || !segments_ok || !plain(field, &[])
        {
            return Err(ResolveError::Invalid(HELP.into()));
        }
        let version = match query_value(query, "version", "a Vault reference")? {
            None => None,
            Some(v) => Some(v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ResolveError::Invalid("?version= takes a KV version number (1, 2, …)".into())
            })?),
        };
        Ok(SecretRef::Vault {
            mount: mount.into(),
            path: path.into(),
            field: field.into(),
            version,
        })
    }

    fn parse_aws_sm(rest: &str) -> Result<Self, ResolveError> {
        const HELP: &str = "an AWS Secrets Manager reference looks like aws-sm://SECRET_ID_OR_ARN[#JSON_FIELD][?stage=AWSPENDING]";
        let (id, query, field) = split_query_fragment(rest);
        if !plain(id, &['/', ':', '+', '=', '@']) || field.is_some_and(|f| !plain(f, &[])) {
            return Err(ResolveError::Invalid(HELP.into()));
        }
        let stage = query_value(query, "stage", "an aws-sm reference")?;
        if stage.is_some_and(|s| !plain(s, &[])) {
            return Err(ResolveError::Invalid(HELP.into()));
        }
        Ok(SecretRef::AwsSm {
            id: id.into(),
            field: field.map(str::to_string),
            stage: stage.map(str::to_string),
        })
    }

    /// The store kind, for logs and the inventory.
    pub fn store(&self) -> &'static str {
        match self {
            SecretRef::Env(_) => "env",
            SecretRef::File(_) => "file",
            SecretRef::Vault { .. } => "vault",
            SecretRef::AwsSm { .. } => "aws-sm",
            SecretRef::Exec(_) => "exec",
            SecretRef::Sealed(_) => "sealed",
        }
    }

    /// A modification stamp the cache uses to notice a changed file without re-reading it.
    pub fn version_hint(&self) -> Option<std::time::SystemTime> {
        match self {
            SecretRef::File(p) => std::fs::metadata(p).and_then(|m| m.modified()).ok(),
            _ => None,
        }
    }

    /// Whether the value can be read here, without a network store (`env:` and `file:`).
    pub fn is_local(&self) -> bool {
        matches!(self, SecretRef::Env(_) | SecretRef::File(_))
    }

    /// Reads a local (`env:`, `file:`) secret now. `file:` references must name a regular
    /// file of at most [`MAX_SECRET_FILE`] bytes that `policy` permits (checked on the opened
    /// file). Other kinds are read by `airlock-secretstore`.
    #[allow(clippy::disallowed_methods)] // an env: reference is read from the environment by design
    pub fn resolve(&self, policy: &ReferencePolicy) -> Result<Secret, ResolveError> {
        let value = match self {
            SecretRef::Env(name) if policy.reserved_env.contains(&name.to_ascii_uppercase()) => {
                return Err(ResolveError::Invalid(format!(
                    "env:{name} is passed to exec: commands ([secrets] exec_env) and cannot hold a provider key"
                )))
            }
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
            _ => {
                return Err(ResolveError::Invalid(format!(
                    "{self} is read through its store, not locally"
                )))
            }
        };
        value_to_secret(value, &self.to_string())
    }
}

/// The checks every secret value passes, whatever its store: trailing newlines dropped, not
/// empty, one line. `what` names the reference in errors (never the value).
pub fn value_to_secret(value: String, what: &str) -> Result<Secret, ResolveError> {
    {
        let mut value = value;
        let trimmed_len = value.trim_end_matches(['\n', '\r']).len();
        value.truncate(trimmed_len);
        if value.trim().is_empty() {
            return Err(ResolveError::NotFound(format!("{what} is empty")));
        }
        if value.chars().any(|c| c.is_control()) {
            zeroize::Zeroize::zeroize(&mut value);
            return Err(ResolveError::Invalid(format!(
                "{what} holds control characters; a key must be a single line"
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
            SecretRef::Vault {
                mount,
                path,
                field,
                version,
            } => {
                write!(f, "vault://{mount}/{path}")?;
                if let Some(v) = version {
                    write!(f, "?version={v}")?;
                }
                write!(f, "#{field}")
            }
            SecretRef::AwsSm { id, field, stage } => {
                write!(f, "aws-sm://{id}")?;
                if let Some(s) = stage {
                    write!(f, "?stage={s}")?;
                }
                if let Some(fl) = field {
                    write!(f, "#{fl}")?;
                }
                Ok(())
            }
            SecretRef::Exec(argv) => write!(f, "exec:{}", shell_words::join(argv)),
            SecretRef::Sealed(id) => write!(f, "sealed:{id}"),
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
            "vault://secret",
            "vault://secret/x",
            "vault://secret/../x#k",
            "vault://../sys#x",
            "env:VAULT_TOKEN",
            "env:BAO_TOKEN",
            "env:AWS_SECRET_ACCESS_KEY",
            "vault://secret/x#k?version=0",
            "vault://secret/x#k?v=1",
            "aws-sm://a b",
            "exec:",
            "exec:'unclosed",
            "sealed:",
            "sealed:a/b",
            "env:AIRLOCK_ADMIN_TOKEN",
            "env:airlock_x",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_references_round_trip() {
        for (text, store) in [
            ("vault://secret/ai/openai#api_key", "vault"),
            ("vault://kv/a/b/c?version=3#key", "vault"),
            ("aws-sm://prod/openai#api_key", "aws-sm"),
            ("aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:ai-AbCdEf?stage=AWSPENDING#k", "aws-sm"),
            ("aws-sm://plain", "aws-sm"),
            ("exec:op read 'op://ai/open ai/credential'", "exec"),
            ("sealed:s_0123abcd", "sealed"),
        ] {
            let r = SecretRef::parse(text).unwrap();
            assert_eq!(r.store(), store);
            assert_eq!(r.to_string(), text);
            assert_eq!(SecretRef::parse(&r.to_string()).unwrap(), r);
        }
        // The fragment may come before the query.
        let r = SecretRef::parse("vault://secret/x#k?version=2").unwrap();
        assert_eq!(r.to_string(), "vault://secret/x?version=2#k");
        match SecretRef::parse("exec:/usr/bin/pass show 'ai/open ai'").unwrap() {
            SecretRef::Exec(argv) => assert_eq!(argv, ["/usr/bin/pass", "show", "ai/open ai"]),
            other => panic!("{other:?}"),
        }
        // A key pasted where a reference belongs is refused without being echoed.
        let key = format!("sk-proj-{}", crate::random_token(24));
        let err = SecretRef::parse(&format!("exec:echo {key}"))
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains(&key) && err.contains("looks like a key"),
            "{err}"
        );
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
