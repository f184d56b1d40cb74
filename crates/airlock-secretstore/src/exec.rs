//! `exec:` references: a command (no shell) whose standard output is the secret, e.g. a
//! password manager's CLI.

use airlock_secrets::{ResolveError, Secret, MAX_SECRET_FILE, RESERVED_ENV_PREFIX};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

/// Runs `argv` with a timeout; its stdout (at most 64 KiB, trailing newline dropped) is the
/// secret. The child gets no stdin and none of airlock's own `AIRLOCK_*` variables; its
/// stderr is never shown (a password manager may print anything there), only its length.
pub async fn run(argv: &[String], timeout: Duration) -> Result<Secret, ResolveError> {
    let what = format!("exec:{}", argv.first().map(String::as_str).unwrap_or(""));
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with(RESERVED_ENV_PREFIX)
        {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ResolveError::NotFound(format!("{what}: no such program"))
        } else {
            ResolveError::Unavailable(format!("{what} could not start: {}", e.kind()))
        }
    })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let work = async {
        let mut out = Zeroizing::new(Vec::new());
        let mut err = Vec::new();
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
        let (r, ()) = tokio::join!(read_out, read_err);
        r.map_err(|e| ResolveError::Unavailable(format!("{what}: {}", e.kind())))?;
        let status = child
            .wait()
            .await
            .map_err(|e| ResolveError::Unavailable(format!("{what}: {}", e.kind())))?;
        Ok::<_, ResolveError>((out, err.len(), status))
    };
    let (out, err_len, status) = match tokio::time::timeout(timeout, work).await {
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

    #[tokio::test]
    async fn output_failure_and_timeout() {
        let s = run(
            &argv(&["printf", "abcdefghijklmnop\\n"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(s.last4(), "mnop");
        let e = run(
            &argv(&["sh", "-c", "echo secret-ish >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("failed") && !e.contains("secret-ish"), "{e}");
        let e = run(&argv(&["sleep", "5"]), Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("killed"), "{e}");
        let e = run(&argv(&["/nonexistent/prog"]), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ResolveError::NotFound(_)));
        // airlock's own settings are not passed on.
        std::env::set_var("AIRLOCK_TEST_EXEC_HIDDEN", "x");
        let e = run(
            &argv(&[
                "sh",
                "-c",
                "test -z \"$AIRLOCK_TEST_EXEC_HIDDEN\" && echo abcdefghijklmnop",
            ]),
            Duration::from_secs(5),
        )
        .await;
        assert!(e.is_ok());
    }
}
