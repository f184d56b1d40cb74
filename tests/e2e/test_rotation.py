"""Rotation you can prove, and incident mode, against OpenBao and moto, with mock providers
that accept the old and the new key until the test revokes the old one (as a provider would
after the customer revokes it).

Under a steady load from the official `openai` SDK (plain and streaming), credentials are
rotated one by one and then with `--all`: no client request fails, after each promotion the
provider sees only the new key, `verify --old` fails until the provider refuses the old key
and passes after, and a new key the provider refuses is never put in service. A lockdown
refuses every earlier token within a second; a token minted after it works. The incident
report names the identity and address of a planted "attacker" token.
"""
import json
import sqlite3
import threading
import time

import httpx
import pytest

from conftest import make_canary, recording_client
from stores import Env

GRACE = 1  # [rotation] grace_secs for this server


def stats(env, name):
    return httpx.get(f"http://127.0.0.1:{env.mock_ports[name]}/mock/stats").json()


def revoke(env, name, index):
    r = httpx.post(f"http://127.0.0.1:{env.mock_ports[name]}/mock/revoke?index={index}")
    assert r.status_code == 200, r.text


class Load:
    """Two threads sending plain and streaming requests to each model until stopped."""

    def __init__(self, env, models, token):
        self.env, self.models, self.token = env, models, token
        self.failures, self.ok = [], 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(2)]

    def run(self, i):
        import openai
        c = openai.OpenAI(base_url=self.env.url + "/v1", api_key=self.token, max_retries=0,
                          http_client=recording_client(httpx, self.env.captured))
        n = 0
        while not self.stop.is_set():
            model = self.models[n % len(self.models)]
            stream = (n + i) % 2 == 1
            n += 1
            try:
                if stream:
                    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
                        if ch.choices)
                else:
                    text = c.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
                assert text
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append(f"{model} stream={stream}: {type(e).__name__}: {e}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


@pytest.fixture(scope="module")
def env(airlock):
    tmp = airlock.tmp / "rotation"
    tmp.mkdir()
    e = Env(tmp)
    try:
        e.start({"AIRLOCK_ROTATION__GRACE_SECS": str(GRACE)})
        k = e.keys
        k["v1"], k["v2"], k["v3"], k["s1"], k["s2"], k["s3"], k["z1"], k["z2"] = (make_canary() for _ in range(8))
        e.bao.kv_put("ai/rot", api_key=k["v1"])
        e.sm.create_secret(Name="rot/openai", SecretString=json.dumps({"api_key": k["s1"]}))
        e.mock("rv", f"{k['v1']},{k['v2']},{k['v3']}")
        e.mock("rs", f"{k['s1']},{k['s2']},{k['s3']}")
        e.mock("rz", f"{k['z1']},{k['z2']}")
        e.add("rv", "rv-*", secret="vault://secret/ai/rot#api_key")
        e.add("rs", "rs-*", secret="aws-sm://rot/openai#api_key")
        e.add("rz", "rz-*", stdin=k["z1"])
        yield e
    finally:
        e.close()


def test_rotations_under_load_fail_no_request_and_the_old_key_is_not_used_after(env):
    k = env.keys
    token = env.cli_json("token", "mint", "--env", "prod", "--model", "*", "--ttl", "1h")["token"]
    with Load(env, ["rv-1", "rs-1", "rz-1"], token) as load:
        time.sleep(1)
        # Secrets Manager: the new key goes in as AWSPENDING; rotate tests it, moves the labels.
        env.sm.put_secret_value(SecretId="rot/openai", SecretString=json.dumps({"api_key": k["s2"]}),
                                VersionStages=["AWSPENDING"])
        rot = env.cli_json("credential", "rotate", "rs")
        assert rot["state"] == "promoted" and rot["tested_at"] and rot["promoted_at"], rot
        after_rs = stats(env, "rs")["key_counts"]
        cur = env.sm.get_secret_value(SecretId="rot/openai", VersionStage="AWSCURRENT")
        assert json.loads(cur["SecretString"])["api_key"] == k["s2"], "AWSCURRENT moved to the new version"
        prev = env.sm.get_secret_value(SecretId="rot/openai", VersionStage="AWSPREVIOUS")
        assert json.loads(prev["SecretString"])["api_key"] == k["s1"]
        # A sealed credential: the new key from stdin.
        rot = env.cli_json("credential", "rotate", "rz", "--new-secret-stdin", stdin=k["z2"])
        assert rot["state"] == "promoted" and rot["source"] == "stdin", rot
        after_rz = stats(env, "rz")["key_counts"]
        # OpenBao, following the latest version: the refresher tests and promotes by itself.
        env.bao.kv_put("ai/rot", api_key=k["v2"])
        deadline = time.time() + 10
        while time.time() < deadline:
            rows = env.cli_json("credential", "show", "rv")["rotations"]
            if rows and rows[0]["state"] == "promoted":
                break
            time.sleep(0.2)
        assert rows and rows[0]["source"] == "auto" and rows[0]["state"] == "promoted", rows
        after_rv = stats(env, "rv")["key_counts"]
        time.sleep(2)
    assert not load.failures, load.failures[:5]
    assert load.ok > 30, load.ok
    # After each promotion the provider saw only the new key (a request already on its way
    # at the promotion may arrive just after it: at most one per load thread).
    for name, before in [("rs", after_rs), ("rz", after_rz), ("rv", after_rv)]:
        now = stats(env, name)["key_counts"]
        assert now[0] - before[0] <= 2, (name, before, now)
        assert now[1] > before[1], (name, before, now)
    # Each step is on record.
    for action in ["credential.rotation.stage", "credential.rotation.test", "credential.rotation.promote"]:
        assert {r["target"] for r in env.audit(action)} >= {"rs", "rz"}, action


def test_a_new_key_the_provider_refuses_is_not_put_in_service(env):
    bad = make_canary()
    env.keys["z_bad"] = bad
    r = env.cli("credential", "rotate", "rz", "--new-secret-stdin", "--json", stdin=bad)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    rot = json.loads(r.stdout)
    assert rot["state"] == "failed" and "refused" in rot["reason"] and not rot["promoted_at"], rot
    before = stats(env, "rz")["key_counts"]
    assert env.chat("rz-2") == 200, "the old key keeps serving"
    assert stats(env, "rz")["key_counts"][1] == before[1] + 1
    # The store holds the key in use: nothing to rotate, nothing changed.
    r = env.cli("credential", "rotate", "rv")
    assert r.returncode == 2 and "put the new key there first" in r.stderr, r.stderr
    # A key in the store that the provider refuses is kept out, with an alert.
    env.keys["v_bad"] = make_canary()
    env.bao.kv_put("ai/rot", api_key=env.keys["v_bad"])
    deadline = time.time() + 10
    while time.time() < deadline and not any(
            r["target"] == "rv" and r["outcome"] == "failed" for r in env.audit("credential.rotation.test")):
        time.sleep(0.2)
    assert any(r["target"] == "rv" and r["outcome"] == "failed" for r in env.audit("credential.rotation.test"))
    metrics = httpx.get(env.url + "/metrics").text
    assert "airlock_rotations_rejected_total 1" in metrics, metrics
    for _ in range(5):
        assert env.chat("rv-3") == 200
    assert stats(env, "rv")["last"]["key_index"] == 1, "still the promoted key, not the refused one"
    # A restart does not put the refused key in service either: it is not the key the
    # inventory approved, so it waits for its test (and fails it); nothing is served meanwhile.
    env.start({"AIRLOCK_ROTATION__GRACE_SECS": str(GRACE)})
    assert env.chat("rv-3") == 503
    assert env.last_error.body["code"] == "credential_unavailable", env.last_error.body
    env.bao.kv_put("ai/rot", api_key=env.keys["v2"])  # the customer puts the good key back
    env.until("rv-3", 200, 10)
    assert stats(env, "rv")["last"]["key_index"] == 1


def test_a_key_replaced_while_airlock_was_down_is_retired_too(env):
    k = env.keys
    env.stop_server()
    env.bao.kv_put("ai/rot", api_key=k["v3"])
    env.start({"AIRLOCK_ROTATION__GRACE_SECS": str(GRACE)})
    env.until("rv-6", 200, 10)  # tested, then promoted: it replaced v2, the approved key
    assert stats(env, "rv")["last"]["key_index"] == 2
    row = env.cli_json("credential", "show", "rv")["rotations"][0]
    assert row["source"] == "auto" and row["state"] == "promoted" and row["old_last4"] is None, row
    assert row["old_fingerprint"], "the replaced key is known (from the inventory), so it is retired"
    # The store offers v2 again: it was retired, so it is not put back.
    env.bao.kv_put("ai/rot", api_key=k["v2"])
    time.sleep(2.5)
    for _ in range(3):
        assert env.chat("rv-6") == 200
    assert stats(env, "rv")["last"]["key_index"] == 2, "still v3"
    env.bao.kv_put("ai/rot", api_key=k["v3"])


def test_verify_old_passes_only_once_the_provider_refuses_the_old_key(env):
    time.sleep(GRACE + 0.5)
    r = env.cli("credential", "verify", "rs", "--old", "--json")
    assert r.returncode == 1, r.stdout
    v = json.loads(r.stdout)
    assert v["status"] == "alive" and v["confirmed"] is False and v["uses_after_promotion"] == 0, v
    revoke(env, "rs", 0)  # the customer revokes the old key at the provider
    v = env.cli_json("credential", "verify", "rs", "--old")
    assert v["status"] == "dead" and v["confirmed"] is True and v["uses_after_promotion"] == 0, v
    show = env.cli_json("credential", "show", "rs")
    assert show["rotation"]["state"] == "rotated, old key confirmed dead", show["rotation"]
    assert show["rotations"][0]["confirmed_at"], show["rotations"][0]
    # Sealed: confirming destroys the old sealed secret.
    db = env.state / "airlock.db"
    count = lambda: sqlite3.connect(db).execute(  # noqa: E731
        "SELECT COUNT(*) FROM sealed_secrets WHERE credential = 'rz'").fetchone()[0]
    assert count() == 2
    revoke(env, "rz", 0)
    assert env.cli_json("credential", "verify", "rz", "--old")["confirmed"] is True
    assert count() == 1
    assert env.chat("rz-3") == 200 and env.chat("rs-3") == 200


def test_rotate_all_reports_each_credential(env):
    k = env.keys
    # A key a rotation took out of service is never put back, even when the store offers it.
    env.sm.put_secret_value(SecretId="rot/openai", SecretString=json.dumps({"api_key": k["s1"]}),
                            VersionStages=["AWSPENDING"])
    r = env.cli("credential", "rotate", "rs")
    assert r.returncode == 2 and "never put back" in r.stderr, r.stderr
    env.sm.put_secret_value(SecretId="rot/openai", SecretString=json.dumps({"api_key": k["s3"]}),
                            VersionStages=["AWSPENDING"])
    token = env.cli_json("token", "mint", "--env", "prod", "--model", "*", "--ttl", "1h")["token"]
    with Load(env, ["rs-4", "rv-4"], token) as load:
        r = env.cli("credential", "rotate", "--all", "--env", "prod", "--json")
        time.sleep(1)
    assert not load.failures, load.failures[:5]
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = {x["credential"]: x for x in json.loads(r.stdout)["rotations"]}
    assert out["rs"]["state"] == "promoted", out["rs"]
    assert out["rv"]["state"] == "unchanged", out["rv"]
    assert out["rz"]["state"] == "skipped", out["rz"]
    assert stats(env, "rs")["last"]["key_index"] == 2


def test_lockdown_refuses_every_earlier_token_and_the_report_names_the_attacker(env):
    legit = env.cli_json("token", "mint", "--env", "prod", "--model", "*", "--subject", "svc-legit")["token"]
    attacker = env.cli_json("token", "mint", "--env", "prod", "--model", "rs-*", "--subject", "attacker")["token"]

    def call(token, model="rs-5", source="127.0.0.1"):
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport, timeout=10) as c:
            r = c.post(env.url + "/v1/chat/completions", headers={"authorization": f"Bearer {token}"},
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            env.captured.append(r.content)
            return r.status_code

    for _ in range(3):
        assert call(legit) == 200
    time.sleep(0.05)
    since = int(time.time() * 1000)
    time.sleep(0.05)
    assert call(legit) == 200
    for _ in range(4):
        assert call(attacker, source="127.0.0.2") == 200
    rep = env.cli_json("incident", "report", "--since", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since / 1000 - 1)) + "Z")
    rs = next(c for c in rep["credentials"] if c["credential"] == "rs")
    ids = {i["subject"]: i for i in rs["identities"]}
    ips = {i["ip"]: i for i in rs["client_ips"]}
    assert ids["attacker"]["first_seen"] is True and ids["attacker"]["requests"] == 4, ids
    assert ips["127.0.0.2"]["first_seen"] is True and ips["127.0.0.2"]["requests"] == 4, ips
    assert "attacker" in rs["new_identities"] and "127.0.0.2" in rs["new_client_ips"]
    assert rs["rotation"]["state"] in ("promoted", "confirmed"), rs["rotation"]
    text = env.cli("incident", "report", "--since", "10m")
    assert text.returncode == 0 and "attacker" in text.stdout and "FIRST SEEN" in text.stdout, text.stdout

    lock = env.cli_json("incident", "lockdown", "--suspend-credentials", "rz", "--reason", "drill")
    t0 = time.time()
    assert lock["suspended"] == ["rz"], lock
    assert call(legit) == 401 and call(attacker, source="127.0.0.2") == 401
    assert time.time() - t0 < 1.0, "old tokens refused within a second"
    fresh = env.cli_json("token", "mint", "--env", "prod", "--model", "*", "--ttl", "10m")["token"]
    assert call(fresh) == 200 and call(fresh, model="rv-5") == 200
    assert call(fresh, model="rz-4") != 200, "the suspended credential serves nothing"
    assert any(r["outcome"] == "ok" and "drill" in r["reason"] for r in env.audit("incident.lockdown"))
    # A bad target changes nothing.
    r = env.cli("incident", "lockdown", "--suspend-credentials", "no-such-thing")
    assert r.returncode == 2 and "nothing was changed" in r.stderr
    assert call(fresh) == 200
    # After a restart the lockdown still holds.
    env.start({"AIRLOCK_ROTATION__GRACE_SECS": str(GRACE)})
    assert call(legit) == 401 and call(fresh) == 200


def test_no_rotated_key_bytes_anywhere(env):
    env.stop_server()
    keys = [v.encode() for v in env.keys.values()]
    hits = []
    for f in env.tmp.rglob("*"):
        if f.is_file() and f.name not in ("exec.key", "bao.log", "moto.log"):
            data = f.read_bytes()
            hits += [(str(f), i) for i, k in enumerate(keys) if k in data]
    hits += [("responses", i) for i, k in enumerate(keys) if any(k in c for c in env.captured)]
    assert not hits, hits
