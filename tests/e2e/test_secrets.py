"""Customer-held secrets against the real stores: OpenBao (KV v2, Transit, AppRole) and AWS
Secrets Manager and KMS (moto), with `airlock mock-provider --expect-key` as the provider, so
a request succeeds only when exactly the right key arrived.

Every store kind gets its own canary key; the last test checks that none of their bytes is in
the database (sealed secrets included: only ciphertext), the debug log, the audit log, any
response or CLI output.
"""
import json
import signal
import time

import httpx
import pytest

from conftest import make_canary
from stores import AIRLOCK_POLICY, MAX_STALE, REFRESH, TIMEOUT, Env

@pytest.fixture(scope="module")
def env(tmp_path_factory, airlock):
    # Under the session's directory, so the session-wide canary sweep covers these files too.
    tmp = airlock.tmp / "secrets"
    tmp.mkdir()
    e = Env(tmp)
    try:
        e.start()
        yield e
    finally:
        e.close()


def test_each_store_serves_its_key_and_verify_reports_it(env):
    k = env.keys
    k["vault"], k["sm"], k["exec"], k["sealed"] = (make_canary() for _ in range(4))
    v1 = env.bao.kv_put("ai/openai", api_key=k["vault"], note="other fields are ignored")
    env.sm.create_secret(Name="ai/openai", SecretString=json.dumps({"api_key": k["sm"]}))
    env.exec_key.write_text(k["exec"] + "\n")
    for name in ["vault", "sm", "exec", "sealed"]:
        env.mock(name, k[name])
    added = env.add("vault", "vault-*", secret="vault://secret/ai/openai#api_key")
    assert added["secret_version"] == str(v1) and added["secret_ref"] == "vault://secret/ai/openai#api_key"
    added = env.add("sm", "sm-*", secret="aws-sm://ai/openai#api_key")
    assert added["secret_version"], added
    env.add("exec", "exec-*", secret=f"exec:{env.printer}")
    sealed = env.add("sealed", "sealed-*", stdin=k["sealed"] + "\n")
    assert sealed["secret_ref"].startswith("sealed:s_"), sealed
    assert "keyfile:" in sealed["secret_version"], "init's default KEK is the key file"

    for model in ["vault-1", "sm-1", "exec-1", "sealed-1"]:
        assert env.chat(model) == 200, (model, getattr(env, "last_error", None))
    for name in ["vault", "sm", "exec", "sealed"]:
        stats = httpx.get(f"http://127.0.0.1:{env.mock_ports[name]}/mock/stats").json()
        assert stats["last"]["key"] == "ok", (name, stats)

    v = env.cli_json("credential", "verify", "vault")
    assert (v["status"], v["store"], v["version"]) == ("ok", "vault", str(v1)), v
    assert v["fingerprint"].startswith("hmac-sha256:") and v["last4"] == k["vault"][-4:]
    # A key the provider refuses: verify says so with exit code 1.
    env.mock("exec", make_canary())
    r = env.cli("credential", "verify", "exec")
    assert r.returncode == 1 and "refused" in r.stdout, (r.returncode, r.stdout, r.stderr)
    env.mock("exec", k["exec"])
    doc = env.cli_json("doctor")
    assert doc["ok"], doc
    names = {c["name"] for c in doc["checks"]}
    assert f"vault {env.bao.addr}" in names and any(n.startswith("kek keyfile:") for n in names)
    assert {"credential vault", "credential sm", "credential exec", "credential sealed"} <= names

    # Every read is audited with its store and version, never the value.
    reads = env.audit("secret.resolve")
    assert any(r["target"] == "vault" and f"(version {v1})" in r["reason"] for r in reads), reads[:5]
    assert any(r["target"] == "sm" and "aws-sm" in r["reason"] for r in reads)

    # References that would leak or cannot work are refused with a clear message.
    r = env.cli("credential", "add", "bad", "--provider", "openai", "--env", "prod",
                "--secret", "vault://secret/ai/missing#api_key")
    assert r.returncode == 2 and "nothing at" in r.stderr, r.stderr
    r = env.cli("credential", "add", "bad", "--provider", "openai", "--env", "prod",
                "--secret", "aws-sm://ai/openai#nofield")
    assert r.returncode == 2 and "no field" in r.stderr, r.stderr
    # A credential may not read airlock's keys or the stores' own credentials: exec: runs only
    # the programs the operator listed, env: never names a store's variables.
    for ref, why in [
        (f"exec:/bin/cat {env.state}/keys/root-1.key", "exec_allow"),
        (f"exec:/bin/sh -c 'cat {env.state}/keys/root-1.key'", "exec_allow"),
        ("env:VAULT_TOKEN", "secret stores"),
        ("env:AWS_SECRET_ACCESS_KEY", "secret stores"),
        (f"file:{env.state}/keys/kek.key", "own state"),
    ]:
        r = env.cli("credential", "add", "bad", "--provider", "openai", "--env", "prod", "--secret", ref)
        assert r.returncode == 2 and why in r.stderr, (ref, r.stderr)
    assert "bad" not in {c["name"] for c in env.cli_json("credential", "list")["credentials"]}


def test_new_versions_reach_the_provider_within_one_refresh(env):
    k = env.keys
    # OpenBao: a new KV v2 version. The mock is restarted to accept only the new key.
    k["vault2"] = make_canary()
    v2 = env.bao.kv_put("ai/openai", api_key=k["vault2"])
    env.mock("vault", k["vault2"])
    env.until("vault-2", 200, REFRESH + 3)
    assert env.cli_json("credential", "show", "vault")["secret_version"] == str(v2)
    # Secrets Manager: a new AWSCURRENT.
    k["sm2"] = make_canary()
    env.sm.put_secret_value(SecretId="ai/openai", SecretString=json.dumps({"api_key": k["sm2"]}))
    env.mock("sm", k["sm2"])
    env.until("sm-2", 200, REFRESH + 3)
    # Each new version was tested and promoted by itself, as a recorded rotation.
    promoted = [r for r in env.audit("credential.rotation.promote") if "(auto)" in (r["reason"] or "")]
    assert {r["target"] for r in promoted} >= {"vault", "sm"}, promoted
    show = env.cli_json("credential", "show", "vault")
    assert show["rotations"][0]["source"] == "auto" and show["rotations"][0]["state"] == "promoted", show["rotations"]
    assert show["rotations"][0]["new_version"] == str(v2)
    # A staging label other than AWSCURRENT is honoured.
    k["sm_pending"] = make_canary()
    env.sm.put_secret_value(SecretId="ai/openai", SecretString=json.dumps({"api_key": k["sm_pending"]}),
                            VersionStages=["AWSPENDING"])
    env.mock("smpending", k["sm_pending"])
    env.add("smpending", "pending-*", secret="aws-sm://ai/openai?stage=AWSPENDING#api_key")
    assert env.chat("pending-1") == 200
    assert env.chat("sm-3") == 200, "AWSCURRENT still serves its own key"


def test_store_down_serves_from_cache_then_503_then_recovers(env):
    assert env.chat("vault-3") == 200
    env.bao.proc.send_signal(signal.SIGSTOP)  # OpenBao stops answering (connections hang)
    try:
        t0 = time.time()
        # Within max_stale every request is answered from memory, without waiting on the store.
        while time.time() - t0 < MAX_STALE - 1.5:
            s = time.time()
            assert env.chat("vault-3") == 200
            assert time.time() - s < 1.0, "served from cache, not after a store timeout"
            time.sleep(0.2)
        # After max_stale: a clear 503 in the client's dialect, fast, naming the store.
        took = env.until("vault-3", 503, MAX_STALE + TIMEOUT * 3 + 3)
        assert took > 0
        err = env.last_error
        assert err.body["code"] == "credential_unavailable" and "vault" in err.body["message"], err.body
        s = time.time()
        assert env.chat("vault-3") == 503
        assert time.time() - s < TIMEOUT * 2 + 1, "no request hangs on a dead store"
        # Other stores are untouched.
        assert env.chat("sm-4") == 200 and env.chat("exec-4") == 200
    finally:
        env.bao.proc.send_signal(signal.SIGCONT)
    env.until("vault-3", 200, 15)
    expired = env.audit("secret.expired")
    assert any(r["target"] == "vault" for r in expired), expired


def test_sealed_secrets_move_between_keks_and_stop_when_a_kek_is_revoked(env):
    k = env.keys
    # Restart with OpenBao Transit as the KEK; seal a second secret under it, then rotate:
    # the key-file secret moves to Transit, both still open.
    env.start({"AIRLOCK_SECRETS__KEK": "transit://airlock-kek"})
    k["sealed_tr"] = make_canary()
    env.mock("sealedtr", k["sealed_tr"])
    row = env.add("sealedtr", "sealedtr-*", stdin=k["sealed_tr"])
    assert "transit://airlock-kek@" in row["secret_version"], row
    rot = env.cli_json("kek", "rotate")
    assert rot["kek"] == "transit://airlock-kek" and rot["rewrapped"] == 2 and not rot["failed"], rot
    assert rot["version"] == "v2", "Transit got a new key version"
    env.start({"AIRLOCK_SECRETS__KEK": "transit://airlock-kek"})  # nothing cached: read from the store
    assert env.chat("sealed-2") == 200 and env.chat("sealedtr-1") == 200

    # The customer withdraws decrypt from airlock's Vault policy: sealed secrets stop within a
    # refresh, with an error naming the KEK; the KV secret keeps working.
    env.bao.policy("airlock", AIRLOCK_POLICY.replace('path "transit/decrypt/airlock-kek" { capabilities = ["update"] }', ""))
    try:
        env.until("sealedtr-2", 503, REFRESH + 4)
        assert env.chat("sealed-3") == 503
        assert env.chat("vault-4") == 200, "nothing else breaks"
        fails = [r for r in env.audit("secret.resolve") if r["outcome"] == "failed" and r["target"] == "sealedtr"]
        assert any("KEK transit://airlock-kek" in r["reason"] and "dropped" in r["reason"] for r in fails), fails[-3:]
        doc = env.cli("doctor")
        assert doc.returncode == 1 and "FAIL" in doc.stdout, doc.stdout
    finally:
        env.bao.policy("airlock", AIRLOCK_POLICY)
    env.until("sealedtr-3", 200, REFRESH + 6)

    # AWS KMS as the KEK, logging in to OpenBao with AppRole this time.
    key_id = env.kms.create_key(Description="airlock kek")["KeyMetadata"]["KeyId"]
    env.bao.ok("POST", "/sys/auth/approle", json={"type": "approle"})
    env.bao.ok("POST", "/auth/approle/role/airlock", json={"token_policies": ["airlock"], "token_ttl": "1h"})
    role_id = env.bao.ok("GET", "/auth/approle/role/airlock/role-id")["data"]["role_id"]
    secret_id = env.bao.ok("POST", "/auth/approle/role/airlock/secret-id", json={})["data"]["secret_id"]
    sid = env.tmp / "approle-secret-id"
    sid.write_text(secret_id)
    env.start({
        "AIRLOCK_SECRETS__KEK": f"aws-kms://{key_id}",
        "AIRLOCK_SECRETS__VAULT__AUTH": "approle",
        "AIRLOCK_SECRETS__VAULT__ROLE_ID": role_id,
        "AIRLOCK_SECRETS__VAULT__SECRET_ID_FILE": str(sid),
        "BAO_TOKEN": "",
    })
    k["sealed_kms"] = make_canary()
    env.mock("sealedkms", k["sealed_kms"])
    env.add("sealedkms", "sealedkms-*", stdin=k["sealed_kms"])
    rot = env.cli_json("kek", "rotate")
    assert rot["kek"] == f"aws-kms://{key_id}" and rot["rewrapped"] == 3 and not rot["failed"], rot
    for m in ["sealed-4", "sealedtr-4", "sealedkms-1", "vault-5"]:
        assert env.chat(m) == 200, m
    # Transit no longer matters to sealed secrets; disabling the KMS key stops them all.
    env.kms.disable_key(KeyId=key_id)
    try:
        env.until("sealedkms-2", 503, REFRESH + 4)
        env.until("sealed-5", 503, REFRESH + 4)
        assert env.chat("vault-6") == 200 and env.chat("sm-5") == 200
        fails = [r for r in env.audit("secret.resolve") if r["outcome"] == "failed" and r["target"] == "sealedkms"]
        assert any(f"aws-kms://{key_id}" in r["reason"] for r in fails), fails[-3:]
    finally:
        env.kms.enable_key(KeyId=key_id)
    env.until("sealedkms-3", 200, REFRESH + 6)


def test_no_key_bytes_anywhere(env):
    env.stop_server()
    keys = [v.encode() for v in env.keys.values()]
    assert len(keys) >= 8
    db = env.state / "airlock.db"
    assert db.exists()
    hits = []
    for f in env.tmp.rglob("*"):
        if not f.is_file() or f.name in ("exec.key", "bao.log", "moto.log"):
            continue
        data = f.read_bytes()
        for i, k in enumerate(keys):
            if k in data:
                hits.append((str(f), i))
    for i, k in enumerate(keys):
        if any(k in c for c in env.captured):
            hits.append(("responses/CLI output", i))
    assert not hits, hits
    # The sealed secrets are in the database, as ciphertext only.
    import sqlite3
    rows = sqlite3.connect(db).execute("SELECT kek, length(ciphertext), length(wrapped_key) FROM sealed_secrets").fetchall()
    assert len(rows) == 3 and all(r[0].startswith("aws-kms://") and r[1] > 40 and r[2] > 0 for r in rows), rows
    logs = b"".join((env.tmp / f"server-{i}.log").read_bytes() for i in range(1, env.log_n + 1))
    assert b"DEBUG" in logs
