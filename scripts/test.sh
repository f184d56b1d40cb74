#!/usr/bin/env bash
# Runs every test. Installs what the tests need, idempotently, into ignored folders of the
# repo (.venv for the Python SDKs). Under AIRLOCK_REQUIRE_ALL=1 (CI) nothing may be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n== %s\n' "$*"; }

step "python SDKs (openai, anthropic) into .venv"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum tests/e2e/requirements.txt | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt
  echo "$want" > "$stamp"
fi

step "format, lints and conventions (no import circles, layers, long files say why)"
cargo fmt --all -- --check
python3 scripts/conventions.py
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "dependencies: licences, sources, duplicate versions (cargo deny, into .tools)"
deny_version=0.20.2
if [[ "$(.tools/bin/cargo-deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]]; then
  cargo install --quiet --locked --root .tools cargo-deny --version "$deny_version"
fi
# Advisories are left out: their database is fetched from GitHub, which CI cannot reach.
.tools/bin/cargo-deny --log-level error check licenses bans sources

step "PostgreSQL on 127.0.0.1:5432 (the store conformance suite runs on it as well as SQLite)"
# It runs on development machines and in CI; started here with its documented command if not.
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  else
    echo "PostgreSQL is not running on 127.0.0.1:5432 and is not installed here (apt-get install postgresql)" >&2
  fi
fi

step "rust tests"
cargo test --workspace --quiet

step "end-to-end tests (official SDKs against airlock serve + mock providers)"
cargo build --quiet --bin airlock
AIRLOCK_BIN="$PWD/target/debug/airlock" .venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider "$@"
