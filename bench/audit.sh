#!/usr/bin/env bash
# Audit log benchmark (not a timed test):
#  1. append throughput under concurrent requests: airlock (full path, audit on) in front of
#     `airlock mock-provider`, wrk at several concurrencies; audit records per second from
#     /metrics, next to the requests per second;
#  2. `airlock audit verify` over one million records: through the admin API, and offline over
#     an export (`audit verify --file`).
#
#   bench/audit.sh                 # N=1000000 CONC="1 16 64" DURATION=10
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
N=${N:-1000000}
CONC=${CONC:-1 16 64}
DURATION=${DURATION:-10}
command -v wrk >/dev/null || { echo "bench: needs wrk (apt-get install -y wrk)" >&2; exit 2; }

cargo build --release --quiet --bin airlock --manifest-path "$root/Cargo.toml"
cargo build --release --quiet -p airlock-store --example audit_fill --manifest-path "$root/Cargo.toml"
bin=$root/target/release/airlock
fill=$root/target/release/examples/audit_fill
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "nothing on $1" >&2; exit 3; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {print $2}'; }
mkdir -p "$here/results"
out="$here/results/audit-$(date -u +%Y%m%dT%H%M%SZ).txt"

# --- 1. append throughput under load ---------------------------------------------------
key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s' "$key" > "$tmp/provider.key"; chmod 600 "$tmp/provider.key"
AIRLOCK_MOCK_EXPECT_KEY=$key "$bin" mock-provider --listen 127.0.0.1:18490 >"$tmp/mock.log" 2>&1 & pids+=($!)
init=$("$bin" init --dir "$tmp/load" --listen 127.0.0.1:18491 --json)
admin=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_token"])' <<<"$init")
AIRLOCK_LOG__LEVEL=warn "$bin" serve --config "$tmp/load/airlock.toml" >"$tmp/load.log" 2>&1 & pids+=($!)
wait_port 18490; wait_port 18491
export AIRLOCK_URL=http://127.0.0.1:18491 AIRLOCK_ADMIN_TOKEN=$admin
"$bin" credential add bench --provider openai-compatible --env bench --secret "file:$tmp/provider.key" \
  --base-url http://127.0.0.1:18490/v1 --models 'gpt-*' >/dev/null
token=$("$bin" token mint --env bench --model 'gpt-*' --ttl 2h)
{
  echo "== audit append under load (airlock + audit in front of airlock mock-provider; $(nproc) cores)"
  for c in $CONC; do
    before=$(metric 18491 airlock_audit_records_total)
    t0=$(date +%s.%N)
    res=$(BENCH_AUTH=$token wrk -t1 -c"$c" -d"${DURATION}s" -s "$root/../shared/bench/post.lua" \
      http://127.0.0.1:18491/v1/chat/completions | grep '^RESULT' | sed 's/^RESULT //')
    t1=$(date +%s.%N)
    after=$(metric 18491 airlock_audit_records_total)
    python3 -c "import sys; b,a,t0,t1=map(float,sys.argv[1:5]); print(f'c=$c $res audit_records_per_s={(a-b)/(t1-t0):.0f}')" \
      "$before" "$after" "$t0" "$t1"
  done
  echo "checkpoints signed: $(metric 18491 airlock_audit_checkpoints_total)  write errors: $(metric 18491 airlock_record_write_errors_total)"
  "$bin" audit verify | sed 's/^/verify after load: /'
} | tee "$out"

# --- 2. verify one million records --------------------------------------------------------
big=$("$bin" init --dir "$tmp/big" --listen 127.0.0.1:18492 --json)
admin_big=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_token"])' <<<"$big")
"$fill" "$tmp/big" "$N" | tee -a "$out"
# The filler writes checkpoints to the database only: start the external copy empty (serve
# refuses a missing checkpoint_file while the database has checkpoints) and let serve fill it.
: > "$tmp/big/audit-checkpoints.jsonl"
AIRLOCK_LOG__LEVEL=warn "$bin" serve --config "$tmp/big/airlock.toml" >"$tmp/big.log" 2>&1 & pids+=($!)
wait_port 18492
export AIRLOCK_URL=http://127.0.0.1:18492 AIRLOCK_ADMIN_TOKEN=$admin_big
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$t0" "$t1"; }
{
  echo "== audit verify over $N records"
  echo "verify through the admin API: $(timed "$bin" audit verify --public-key "$tmp/big/keys/audit-1.pub") s"
  echo "export to JSON Lines:         $(timed "$bin" audit export -o "$tmp/big.jsonl") s ($(du -h "$tmp/big.jsonl" | cut -f1))"
  echo "verify --file offline:        $(timed "$bin" audit verify --file "$tmp/big.jsonl" --public-key "$tmp/big/keys/audit-1.pub") s"
  "$bin" audit verify --file "$tmp/big.jsonl" --public-key "$tmp/big/keys/audit-1.pub"
  peak=$( { /usr/bin/time -f '%M' "$bin" audit verify --file "$tmp/big.jsonl" --public-key "$tmp/big/keys/audit-1.pub" >/dev/null; } 2>&1 | tail -1)
  echo "peak RSS of verify --file: ${peak} KB"
} | tee -a "$out"
echo "results: $out"
