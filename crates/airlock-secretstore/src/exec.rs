//! `exec:` references: a command (no shell) whose standard output is the secret, e.g. a
//! password manager's CLI.

use airlock_secrets::{ResolveError, Secret, MAX_SECRET_FILE, RESERVED_ENV_PREFIXES};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

/// Variables an `exec:` command always gets from the server's environment (when set); any
/// others must be named in `[secrets] exec_env`.
const BASE_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ",
];

/// What `exec:` commands may run and see.
#[derive(Debug, Clone, Default)]
pub struct ExecPolicy {
    /// The commands allowed (`[secrets] exec_allow`): each an absolute program path and its
    /// fixed leading arguments. Empty: `exec:` is off.
    pub allow: Vec<Vec<String>>,
    /// Extra variables passed through (`[secrets] exec_env`), e.g. `OP_SERVICE_ACCOUNT_TOKEN`.
    pub env: Vec<String>,
    /// Longest a command may run.
    pub timeout: Duration,
}

/// Programs that run or print anything they are told to: never allowed, whatever arguments
/// are fixed (a guard rail; the fixed prefix is the real control).
const NEVER: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "fish", "csh", "tcsh", "busybox", "env", "cat", "xargs",
    "sudo", "su", "python", "python3", "perl", "ruby", "node", "php", "lua", "awk", "sed",
];

impl ExecPolicy {
    /// Parses `exec_allow` entries (`"/usr/local/bin/op read"`, split like a shell would).
    pub fn parse_allow(entries: &[String]) -> Result<Vec<Vec<String>>, String> {
        let mut out = Vec::new();
        for e in entries {
            let argv =
                shell_words::split(e).map_err(|_| format!("`{e}` has an unmatched quote"))?;
            let Some(prog) = argv.first() else {
                return Err("an entry is empty".into());
            };
            let p = std::path::Path::new(prog);
            if !p.is_absolute() {
                return Err(format!("{prog} is not an absolute path"));
            }
            let base = p
                .file_name()
                .map(|b| b.to_string_lossy().to_string())
                .unwrap_or_default();
            let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
            if NEVER.contains(&base.as_str()) || NEVER.contains(&stem) {
                return Err(format!(
                    "{prog} runs or prints whatever it is told; list a command that prints one secret"
                ));
            }
            out.push(argv);
        }
        Ok(out)
    }

    /// Whether `argv` may run: it is one of the allowed commands (the same absolute program
    /// path and fixed arguments) followed by at most one argument of its own, which may not
    /// be an option (`-…`). Anyone who may add a credential chooses that argument.
    pub fn check(&self, argv: &[String]) -> Result<(), ResolveError> {
        if self.allow.is_empty() {
            return Err(ResolveError::Invalid(
                "exec: references are off: the operator lists the commands allowed in [secrets] exec_allow".into(),
            ));
        }
        let fits = self.allow.iter().any(|prefix| {
            argv.len() >= prefix.len()
                && argv.len() <= prefix.len() + 1
                && argv[..prefix.len()] == prefix[..]
                && argv[prefix.len()..].iter().all(|a| !a.starts_with('-'))
        });
        if !fits {
            return Err(ResolveError::Invalid(format!(
                "exec:{} is not one of the commands in [secrets] exec_allow followed by at most one argument",
                argv[0]
            )));
        }
        Ok(())
    }
}

/// Kills the command's process group when dropped: when the read ends, fails, times out or is
/// cancelled, nothing it started outlives it (a process that left the group with `setsid`
/// is beyond this; run airlock under a service manager that contains its children).
struct Group(Option<rustix::process::Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Runs `argv` with a timeout; its stdout (at most 64 KiB, trailing newline dropped) is the
/// secret. The command runs in its own process group (killed whole when it ends or times
/// out), with no stdin and a cleared environment (only [`BASE_ENV`] and the policy's `env`,
/// never a reserved variable); its stderr is never shown (a password manager may print
/// anything there), only its length.
pub async fn run(argv: &[String], policy: &ExecPolicy) -> Result<Secret, ResolveError> {
    policy.check(argv)?;
    let timeout = policy.timeout;
    let what = format!("exec:{}", argv.first().map(String::as_str).unwrap_or(""));
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(policy.env.iter().map(String::as_str))
    {
        let reserved = RESERVED_ENV_PREFIXES
            .iter()
            .any(|p| name.to_ascii_uppercase().starts_with(p));
        // The allow-listed part of the server's environment is passed on to the command.
        #[allow(clippy::disallowed_methods)]
        let value = std::env::var_os(name);
        if let (false, Some(v)) = (reserved, value) {
            cmd.env(name, v);
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ResolveError::NotFound(format!("{what}: no such program"))
        } else {
            ResolveError::Unavailable(format!("{what} could not start: {}", e.kind()))
        }
    })?;
    let _group = Group(
        child
            .id()
            .and_then(|g| rustix::process::Pid::from_raw(g as i32)),
    );
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let work = async {
        let mut out = Zeroizing::new(Vec::new());
        let mut err = Vec::new();
        let status = {
            // Both pipes at once: a child filling stderr must not stall while stdout is read.
            let read_out = async {
                match stdout.as_mut() {
                    Some(o) => o
                        .take(MAX_SECRET_FILE + 1)
                        .read_to_end(&mut out)
                        .await
                        .map(|_| ()),
                    None => Ok(()),
                }
            };
            let read_err = async {
                if let Some(e) = stderr.as_mut() {
                    let _ = e.take(64 * 1024).read_to_end(&mut err).await;
                }
            };
            let reads = async { tokio::join!(read_out, read_err).0 };
            tokio::pin!(reads);
            // The command's exit ends the read: a process it left running with the pipes open
            // (a daemon it started) must not hold the answer until the timeout.
            tokio::select! {
                r = &mut reads => {
                    r.map_err(|e| ResolveError::Unavailable(format!("{what}: {}", e.kind())))?;
                    child.wait().await
                }
                s = child.wait() => {
                    let _ = tokio::time::timeout(Duration::from_millis(200), &mut reads).await;
                    s
                }
            }
            .map_err(|e| ResolveError::Unavailable(format!("{what}: {}", e.kind())))?
        };
        Ok::<_, ResolveError>((out, err.len(), status))
    };
    let result = tokio::time::timeout(timeout, work).await;
    let (out, err_len, status) = match result {
        Ok(r) => r?,
        Err(_) => {
            return Err(ResolveError::Unavailable(format!(
                "{what} did not finish within {}s and was killed",
                timeout.as_secs_f32()
            )))
        }
    };
    if !status.success() {
        return Err(ResolveError::Unavailable(format!(
            "{what} failed ({status}; {err_len} bytes on stderr, not shown)"
        )));
    }
    if out.len() as u64 > MAX_SECRET_FILE {
        return Err(ResolveError::Invalid(format!(
            "{what} printed more than {} KiB; a key is one line",
            MAX_SECRET_FILE / 1024
        )));
    }
    let text = String::from_utf8(out.to_vec())
        .map_err(|_| ResolveError::Invalid(format!("{what} printed something not UTF-8")))?;
    airlock_secrets::value_to_secret(text, &what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn policy(timeout_ms: u64) -> ExecPolicy {
        ExecPolicy {
            allow: vec![
                vec!["/bin/sh".into(), "-c".into()],
                vec!["/usr/bin/printf".into()],
                vec!["/bin/sleep".into()],
            ],
            env: vec![
                "AIRLOCK_TEST_EXEC_HIDDEN".into(),
                "AIRLOCK_TEST_EXEC_PASSED".into(),
            ],
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn output_failure_and_timeout() {
        let p = policy(5000);
        let s = run(&argv(&["/usr/bin/printf", "abcdefghijklmnop\\n"]), &p)
            .await
            .unwrap();
        assert_eq!(s.last4(), "mnop");
        let e = run(&argv(&["/bin/sh", "-c", "echo secret-ish >&2; exit 3"]), &p)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("failed") && !e.contains("secret-ish"), "{e}");
        let e = run(&argv(&["/bin/sleep", "5"]), &policy(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("killed"), "{e}");
    }

    #[tokio::test]
    async fn only_listed_programs_run_and_they_see_no_reserved_variables() {
        let p = policy(5000);
        for bad in [
            &["cat", "/etc/hostname"][..],
            &["/bin/cat", "/etc/hostname"],
            &["../bin/sh"],
            &["/usr/bin/printf", "a", "b"],
            &["/usr/bin/printf", "--help"],
            &["/bin/sh", "-x", "-c", "echo"],
        ] {
            let e = run(&argv(bad), &p).await.unwrap_err().to_string();
            assert!(e.contains("exec_allow"), "{e}");
        }
        let off = ExecPolicy::default();
        assert!(run(&argv(&["/bin/sh"]), &off)
            .await
            .unwrap_err()
            .to_string()
            .contains("off"));
        // Reserved variables are never passed, even when named in exec_env; others named are.
        std::env::set_var("AIRLOCK_TEST_EXEC_HIDDEN", "x");
        std::env::set_var("VAULT_TOKEN_TEST_EXEC", "x");
        let s = run(
            &argv(&[
                "/bin/sh",
                "-c",
                "test -z \"$AIRLOCK_TEST_EXEC_HIDDEN$VAULT_TOKEN_TEST_EXEC\" && echo abcdefghijklmnop",
            ]),
            &p,
        )
        .await;
        assert!(s.is_ok());
    }

    #[tokio::test]
    async fn a_daemon_left_behind_neither_holds_the_answer_nor_survives() {
        let dir =
            std::env::temp_dir().join(format!("airlock-exec-{}", airlock_secrets::random_token(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("alive");
        let script = format!(
            "(sleep 3; touch {}) & echo abcdefghijklmnop",
            marker.display()
        );
        let t = std::time::Instant::now();
        let s = run(&argv(&["/bin/sh", "-c", &script]), &policy(5000))
            .await
            .unwrap();
        assert_eq!(s.last4(), "mnop");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(
            !marker.exists(),
            "the background process was killed with its group"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
