"""`airlock scan` end to end: a corpus generated at run time (no key-shaped literal is committed),
with keys planted in many kinds of files and in git history, decoys that must not match, and a
real tree nobody here wrote (the Python installation's standard library)."""
import base64
import hashlib
import json
import os
import random
import secrets
import string
import subprocess
import sysconfig
import uuid

import pytest

from conftest import BIN

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "_-"
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B32 = string.ascii_uppercase + "234567"
MARKER = "T3Bl" + "bkFJ"  # OpenAI's marker, split so that no key shape sits in this file


def rand(n, alphabet=ALNUM):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def aws_secret():
    while True:
        s = rand(40, B64)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s


def fingerprint(key):
    return "sha256:" + hashlib.sha256(b"airlock scan finding v1\0" + key.encode()).hexdigest()[:32]


def run(*args, cwd=None, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([BIN, "scan", *args], capture_output=True, text=True, cwd=cwd, env=e, timeout=120)


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "Planter", "GIT_AUTHOR_EMAIL": "planter@example.test",
                        "GIT_COMMITTER_NAME": "Planter", "GIT_COMMITTER_EMAIL": "planter@example.test"})


class Corpus:
    def __init__(self, root):
        self.root = root
        self.planted = {}   # key -> (rule_id, relative path, in_head)
        self.all_bytes = []

    def plant(self, rule, key, path, in_head=True):
        self.planted[key] = (rule, path, in_head)
        return key


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan") / "repo"
    root.mkdir()
    c = Corpus(root)
    git(root, "init", "-q", "-b", "main")

    # History: a .env committed, then deleted; a notebook whose key was later replaced.
    hf = c.plant("huggingface-token", "hf_" + rand(34), "config/.env.production", in_head=False)
    aws_id, aws_sec = "AKIA" + rand(16, B32), aws_secret()
    c.plant("aws-access-key", aws_sec, "config/.env.production", in_head=False)
    (root / "config").mkdir()
    (root / "config/.env.production").write_text(
        f"HF_TOKEN={hf}\nAWS_ACCESS_KEY_ID={aws_id}\nAWS_SECRET_ACCESS_KEY={aws_sec}\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "config")
    git(root, "rm", "-q", "config/.env.production")
    git(root, "commit", "-qm", "oops, remove secrets")

    # Working tree (and HEAD): one key shape per kind of file.
    proj = c.plant("openai-api-key", "sk-proj-" + rand(74, URLSAFE) + MARKER + rand(74, URLSAFE), "app/main.py")
    (root / "app").mkdir()
    (root / "app/main.py").write_text(
        "import os\nfrom openai import OpenAI\n\n"
        f"client = OpenAI(api_key=\"{proj}\")\n")
    ant = c.plant("anthropic-api-key", "sk-ant-api03-" + rand(93, URLSAFE) + "AA", "notebooks/explore.ipynb")
    (root / "notebooks").mkdir()
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": 1, "outputs": [],
                     "source": ["import anthropic\n", f"client = anthropic.Anthropic(api_key=\"{ant}\")\n"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "notebooks/explore.ipynb").write_text(json.dumps(nb, indent=1))
    gem = c.plant("google-api-key", "AIza" + rand(35, URLSAFE), "web/bundle.min.js")
    gh = c.plant("github-token", "ghp_" + rand(36), "web/bundle.min.js")
    (root / "web").mkdir()
    filler = ";".join(f"var a{i}=function(b){{return b*{i}}}" for i in range(3000))
    (root / "web/bundle.min.js").write_text(
        filler + f';var cfg={{key:"{gem}",gh:"{gh}"}};' + filler + "\n")
    groq = c.plant("groq-api-key", "gsk_" + rand(52), "settings.json")
    (root / "settings.json").write_text(json.dumps({"providers": {"groq": {"api_key": groq}}}))
    xai = c.plant("xai-api-key", "xai-" + rand(80), ".env")
    dsk = c.plant("deepseek-api-key", "sk-" + rand(32, HEX), ".env")
    (root / ".env").write_text(f"XAI_API_KEY={xai}\nDEEPSEEK_API_KEY='{dsk}'\n")
    az = c.plant("azure-openai-key", rand(32, HEX), "deploy/values.yaml")
    orr = c.plant("openrouter-api-key", "sk-or-v1-" + rand(64, HEX), "deploy/values.yaml")
    (root / "deploy").mkdir()
    (root / "deploy/values.yaml").write_text(
        f"azure:\n  endpoint: https://x.openai.azure.com\n  azure_openai_api_key: {az}\n"
        f"openrouter:\n  token: \"{orr}\"\n")
    alk = c.plant("airlock-admin-key", f"alk_admin_{rand(12, HEX)}_{rand(48, HEX)}", "scripts/ci.sh")
    (root / "scripts").mkdir()
    (root / "scripts/ci.sh").write_text(f"#!/bin/sh\nexport AIRLOCK_ADMIN_TOKEN={alk}\nairlock token mint\n")

    # Decoys: none of these may be reported.
    doc_id, doc_secret = "AKIAIOSFODNN7" + "EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
    decoys = "\n".join([
        "OPENAI_API_KEY=sk-...",
        "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "ANTHROPIC_API_KEY=sk-ant-api03-" + "your-key-here-" * 7 + "AA",
        "openai_key = 'sk-proj-" + "a" * 40 + MARKER + "a" * 40 + "'",
        f"aws_access_key_id = {doc_id}",
        f"aws_secret_access_key = {doc_secret}",
        "GITHUB_TOKEN=ghp_" + "x" * 36,
        "GEMINI_API_KEY=AIza" + "0" * 35,
        "sha256 " + hashlib.sha256(b"x").hexdigest(),
        "sha1 " + hashlib.sha1(b"x").hexdigest(),
        "md5 " + hashlib.md5(b"x").hexdigest(),
        *[str(uuid.uuid4()) for _ in range(20)],
        "task-" + rand(32, HEX),
        "HF_TOKEN=hf_" + "abcdefghijklmnopqrstuvwxyzabcdefgh",
    ])
    (root / "docs").mkdir()
    (root / "docs/README.md").write_text("# Setup\n\n```\n" + decoys + "\n```\n")
    blob = base64.encodebytes(random.randbytes(64 * 1024)).decode()
    (root / "docs/logo.b64").write_text(blob)
    (root / "docs/sums.txt").write_text("\n".join(hashlib.sha256(os.urandom(8)).hexdigest() for _ in range(2000)))

    # Ignored and binary files: not scanned.
    c.ignored = "gsk_" + rand(52)
    (root / ".gitignore").write_text("local/\n")
    (root / "local").mkdir()
    (root / "local/notes.txt").write_text(f"GROQ_API_KEY={c.ignored}\n")
    c.binary = "gsk_" + rand(52)
    (root / "app/model.bin").write_bytes(b"\x00\x01\x02" + c.binary.encode() + b"\x00")

    git(root, "add", "-A")
    git(root, "commit", "-qm", "app")
    return c


def high(findings):
    return [f for f in findings if f["confidence"] == "high"]


def test_every_planted_key_found_once_and_no_decoy(corpus):
    r = run(".", "--git", "--format", "json", cwd=corpus.root)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    found = {f["fingerprint"]: f for f in out["findings"]}
    assert len(corpus.planted) == 12
    for key, (rule, path, in_head) in corpus.planted.items():
        f = found.get(fingerprint(key))
        assert f is not None, f"{rule} in {path} not found"
        assert f["rule_id"] == rule, (rule, f["rule_id"])
        assert f["path"] == path or any(l["path"] == path for l in f["locations"]), (path, f)
        assert f["in_head"] is in_head, (rule, f["in_head"])
        assert f["credential"] is None
        for field in ("provider", "line", "commit", "redacted"):
            assert field in f
    assert len(out["findings"]) == len(corpus.planted), "decoys reported: " + ", ".join(
        f"{f['rule_id']} {f['path']}" for f in out["findings"] if f["fingerprint"] not in
        {fingerprint(k) for k in corpus.planted})
    assert out["stats"]["commits"] == 3 and out["stats"]["blobs"] >= 10


def test_history_findings_name_first_commit_and_author(corpus):
    out = json.loads(run(".", "--git", "--format", "json", cwd=corpus.root).stdout)
    first = subprocess.run(["git", "-C", str(corpus.root), "rev-list", "--max-parents=0", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.strip()
    gone = [f for f in out["findings"] if f["in_head"] is False]
    assert {f["rule_id"] for f in gone} == {"huggingface-token", "aws-access-key"}
    for f in gone:
        assert f["commit"] == first and f["author"].startswith("Planter")
        assert f["path"] == "config/.env.production" and f["line"] in (1, 2)
    # A key both in the working tree and in HEAD's history is one finding with both places.
    proj = next(f for f in out["findings"] if f["rule_id"] == "openai-api-key")
    assert proj["occurrences"] == 2 and proj["commit"] is None
    assert any(l["commit"] for l in proj["locations"])


def test_files_only_honours_gitignore_and_skips_binaries(corpus):
    out = json.loads(run(".", "--format", "json", cwd=corpus.root).stdout)
    fps = {f["fingerprint"] for f in out["findings"]}
    in_tree = {fingerprint(k) for k, (_, _, h) in corpus.planted.items() if h}
    assert fps == in_tree
    assert fingerprint(corpus.ignored) not in fps and fingerprint(corpus.binary) not in fps
    assert out["stats"]["skipped_binary"] >= 1
    out = json.loads(run(".", "--no-ignore", "--format", "json", cwd=corpus.root).stdout)
    assert fingerprint(corpus.ignored) in {f["fingerprint"] for f in out["findings"]}
    out = json.loads(run(".", "--exclude", "web/", "--exclude", "*.ipynb", "--format", "json",
                         cwd=corpus.root).stdout)
    paths = {f["path"] for f in out["findings"]}
    assert not any(p.startswith("web/") or p.endswith(".ipynb") for p in paths), paths
    assert len(out["findings"]) == len(in_tree) - 3


def test_no_output_ever_holds_a_key(corpus):
    outputs = []
    for args in [["--git"], ["--git", "--show-low"], ["--git", "--format", "json"],
                 ["--git", "--format", "sarif"], ["--git", "--json"], ["--no-ignore", "--show-low"]]:
        r = run(".", *args, cwd=corpus.root)
        assert r.returncode == 1
        outputs.append(r.stdout + r.stderr)
    blob = "\n".join(outputs)
    for key in [*corpus.planted, corpus.ignored]:
        assert key not in blob
        assert key[-12:] not in blob, "more than the last four characters shown"
    for f in json.loads(run(".", "--git", "--json", cwd=corpus.root).stdout)["findings"]:
        assert "…" in f["redacted"] and len(f["redacted"]) <= 20


def test_sarif_is_2_1_0_with_rules_results_and_locations(corpus):
    r = run(".", "--git", "--format", "sarif", cwd=corpus.root)
    s = json.loads(r.stdout)
    assert s["version"] == "2.1.0" and "sarif" in s["$schema"]
    run0 = s["runs"][0]
    rules = run0["tool"]["driver"]["rules"]
    ids = [x["id"] for x in rules]
    assert len(ids) == len(set(ids)) and "openai-api-key" in ids
    assert len(run0["results"]) == len(corpus.planted)
    for res in run0["results"]:
        assert ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in ("error", "warning")
        loc = res["locations"][0]["physicalLocation"]
        assert not loc["artifactLocation"]["uri"].startswith(("/", "./"))
        assert loc["region"]["startLine"] >= 1
        assert res["partialFingerprints"]["airlockSecret/v1"].startswith("sha256:")


def test_baseline_and_exit_codes(corpus, tmp_path):
    r = run(".", "--git", "--format", "json", cwd=corpus.root)
    assert r.returncode == 1
    base = tmp_path / "baseline.json"
    base.write_text(r.stdout)
    r = run(".", "--git", "--baseline", str(base), "--format", "json", cwd=corpus.root)
    assert r.returncode == 0, r.stdout
    out = json.loads(r.stdout)
    assert out["findings"] == [] and out["stats"]["baselined"] == len(corpus.planted)
    # A new key is reported against the same baseline.
    new = corpus.root / "new.py"
    new.write_text("KEY = 'pplx-" + rand(48) + "'\n")
    try:
        r = run(".", "--baseline", str(base), "--format", "json", cwd=corpus.root)
        assert r.returncode == 1
        assert [f["rule_id"] for f in json.loads(r.stdout)["findings"]] == ["perplexity-api-key"]
    finally:
        new.unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(str(empty)).returncode == 0
    assert run(str(tmp_path / "missing")).returncode == 2
    (tmp_path / "bad.json").write_text("{not json")
    r = run(str(empty), "--baseline", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "baseline" in r.stderr
    r = run(".", "--since-commit", "no-such-rev", cwd=corpus.root)
    assert r.returncode == 2 and "since-commit" in r.stderr
    assert run(str(empty), "--git").returncode == 2, "not a git repository"
    assert run(".", "--format", "xml", cwd=corpus.root).returncode == 2


def test_since_commit_scans_only_newer_history(corpus):
    first = subprocess.run(["git", "-C", str(corpus.root), "rev-list", "--max-parents=0", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.strip()
    out = json.loads(run(str(corpus.root / "docs"), "--since-commit", first, "--format", "json",
                         cwd=corpus.root).stdout)
    rules = {f["rule_id"] for f in out["findings"]}
    assert "huggingface-token" not in rules, "content of the --since-commit tree is not new"
    assert "openai-api-key" in rules and out["stats"]["commits"] == 2


def test_low_confidence_does_not_fail(tmp_path):
    (tmp_path / "a.txt").write_text("id = " + "AKIA" + rand(16, B32) + "\n")
    r = run(str(tmp_path), "--format", "json")
    assert r.returncode == 0, r.stdout
    f = json.loads(r.stdout)["findings"]
    assert [x["rule_id"] for x in f] == ["aws-access-key-id"] and f[0]["confidence"] == "low"
    assert "low-confidence not shown" in run(str(tmp_path)).stdout
    assert run(str(tmp_path), "--fail-on-low").returncode == 1


def test_python_stdlib_has_no_high_confidence_finding():
    stdlib = sysconfig.get_paths()["stdlib"]
    r = run(stdlib, "--format", "json")
    out = json.loads(r.stdout)
    assert out["stats"]["files"] > 1000, out["stats"]
    assert high(out["findings"]) == [], [(f["rule_id"], f["path"]) for f in high(out["findings"])]
    assert r.returncode == 0


def test_inventory_names_the_credential(airlock, tmp_path):
    key = "sk-proj-" + rand(74, URLSAFE) + MARKER + rand(74, URLSAFE)
    ref = tmp_path / "scan-openai.key"
    ref.write_text(key + "\n")
    ref.chmod(0o600)
    # Serves no model the other tests use (the session's airlock is shared).
    r = airlock.cli("credential", "add", "scan-openai", "--provider", "openai", "--env", "scan-test",
                    "--secret", f"file:{ref}", "--models", "scan-test-only-*")
    assert r.returncode == 0, r.stderr
    tree = tmp_path / "tree"
    tree.mkdir()
    other = "gsk_" + rand(52)
    (tree / "leak.py").write_text(f"OPENAI_API_KEY = \"{key}\"\nGROQ = \"{other}\"\n")
    env = {"AIRLOCK_URL": airlock.url, "AIRLOCK_ADMIN_TOKEN": airlock.admin}
    for extra in [[], ["--fingerprint-key", str(airlock.state / "keys" / "hmac.key")]]:
        r = run(str(tree), "--inventory", "--format", "json", *extra, env=env)
        assert r.returncode == 1, r.stderr
        by_rule = {f["rule_id"]: f for f in json.loads(r.stdout)["findings"]}
        assert by_rule["openai-api-key"]["credential"] == "scan-openai", extra
        assert by_rule["groq-api-key"]["credential"] is None
        assert key not in r.stdout + r.stderr
    r = run(str(tree), "--inventory", env=env)
    assert "credential scan-openai" in r.stdout and "rotate" in r.stdout
    r = run(str(tree), "--inventory", env={"AIRLOCK_URL": "http://127.0.0.1:9", "AIRLOCK_ADMIN_TOKEN": "x"})
    assert r.returncode == 3, r.stderr
