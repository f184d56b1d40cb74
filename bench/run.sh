#!/usr/bin/env bash
# Benchmarks airlock with its full request path on (token verification, policy, usage
# recording to SQLite) in front of the shared harness's mock provider, side by side with nginx,
# LiteLLM and Portkey: see ../../shared/bench/README.md. Prints ratios; results are kept in
# bench/results/ (ignored by git).
#
#   bench/run.sh                       # all peers, CONC="1 64", DURATION=10
#   PEERS="direct nginx-proxy" DURATION=5 bench/run.sh
#   AIRLOCK_BENCH_BIN=/tmp/airlock-old bench/run.sh   # skip the build, use this binary
#   AIRLOCK_BENCH_STORE=postgres://postgres@127.0.0.1:5432/bench bench/run.sh   # on PostgreSQL (an empty database)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
harness=${HARNESS:-$root/../shared/bench/peers.sh}
[[ -x $harness || -f $harness ]] || { echo "bench: harness not found at $harness" >&2; exit 2; }
for tool in nginx wrk ss; do
  command -v "$tool" >/dev/null || { echo "bench: needs $tool (apt-get install -y nginx-light wrk iproute2)" >&2; exit 2; }
done

if [[ -n ${AIRLOCK_BENCH_BIN:-} ]]; then
  bin=$AIRLOCK_BENCH_BIN                     # a binary built earlier (e.g. to compare commits)
else
  cargo build --release --quiet --bin airlock --manifest-path "$root/Cargo.toml"
  bin=$root/target/release/airlock
fi
port=${AIRLOCK_BENCH_PORT:-18400}
tmp=$(mktemp -d)
server=
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

init=$("$bin" init --dir "$tmp/state" --listen "127.0.0.1:$port" --json ${AIRLOCK_BENCH_STORE:+--store "$AIRLOCK_BENCH_STORE"})
admin=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_token"])' <<<"$init")
# The harness's mock accepts any key; this one is random and lives only in the temp dir.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/upstream.key"; chmod 600 "$tmp/upstream.key"
AIRLOCK_LOG__LEVEL=warn "$bin" serve --config "$tmp/state/airlock.toml" > "$tmp/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
export AIRLOCK_URL=http://127.0.0.1:$port AIRLOCK_ADMIN_TOKEN=$admin
"$bin" credential add bench-upstream --provider openai-compatible --env bench \
  --secret "file:$tmp/upstream.key" --base-url http://127.0.0.1:18080/v1 --models 'gpt-4o-mini' >/dev/null
token=$("$bin" token mint --env bench --model gpt-4o-mini --ttl 2h)

mkdir -p "$here/results"
out="$here/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
GATEWAY_URL=http://127.0.0.1:$port GATEWAY_TOKEN=$token bash "$harness" | tee "$out"
requests=$("$bin" credential show bench-upstream --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["usage"]["requests"])')
echo "usage rows recorded for the run: $requests" | tee -a "$out"
echo "results: $out"
