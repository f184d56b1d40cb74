"""The tamper-evident audit log: what is recorded, that tampering is caught and named, offline
verification with only the public key, fail-closed writes, and a kill -9 under load."""
import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time

import httpx
import openai
import pytest

from conftest import BIN, free_port, wait_port

MSG = [{"role": "user", "content": "audit me"}]


@pytest.fixture
def tmp_path(airlock, request):
    """Exports and checkpoint copies live under the session's directory, so the I1 sweep at the
    end of the suite (test_zz_canary) searches them too."""
    d = airlock.tmp / f"t-{request.node.name}"
    d.mkdir()
    return d


class Instance:
    """A separate airlock (own state, own database) in front of the session's mock providers."""

    def __init__(self, a, name, env=None, toml_extra="", init_args=()):
        self.a = a
        self.dir = a.tmp / name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        r = subprocess.run([BIN, "init", "--dir", str(self.dir), "--listen", f"127.0.0.1:{self.port}", "--json",
                            *init_args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        self.admin, self.config = out["admin_token"], out["config"]
        if toml_extra:
            with open(self.config, "a") as f:
                f.write("\n" + toml_extra + "\n")
        self.env = {"OPENAI_KEY_CANARY": a.canary, "AIRLOCK_LOG__LEVEL": "debug", **(env or {})}
        self.proc = None
        self.start()
        for cname, port, models in [("prod", a.mocks["good"], "gpt-*"), ("slow", a.mocks["slow"], "slow-*")]:
            r = self.cli("credential", "add", cname, "--provider", "openai-compatible", "--env", "prod",
                         "--secret", "env:OPENAI_KEY_CANARY", "--base-url", f"http://127.0.0.1:{port}/v1",
                         "--models", models)
            assert r.returncode == 0, r.stderr
        self.token = json.loads(self.cli("token", "mint", "--env", "prod", "--model", "*", "--json").stdout)["token"]

    def start(self):
        self.proc = self.a.spawn(f"{self.dir.name}-server", ["serve", "--config", self.config], self.env)
        wait_port(self.port)
        # The port is bound before the stored log is checked (and repaired): wait for answers.
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("the server did not answer /healthz")

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=20)

    def cli(self, *args):
        e = {"AIRLOCK_URL": self.url, "AIRLOCK_ADMIN_TOKEN": self.admin}
        import os
        env = dict(os.environ)
        env.update(e)
        r = subprocess.run([BIN, *args], capture_output=True, text=True, env=env, timeout=120)
        self.a.captured.append(r.stdout.encode() + r.stderr.encode())
        return r

    def chat(self, model="gpt-4o-mini", stream=False, client=None):
        body = {"model": model, "messages": MSG, "stream": stream}
        h = {"authorization": f"Bearer {self.token}"}
        c = client or httpx.Client(timeout=30)
        r = c.post(self.url + "/v1/chat/completions", json=body, headers=h)
        self.a.captured.append(r.content)
        return r

    def records(self, *args):
        r = self.cli("audit", "tail", "-n", "10000", "--json", *args)
        assert r.returncode == 0, r.stderr
        return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]

    @property
    def db(self):
        return self.dir / "airlock.db"


def test_every_use_refusal_secret_read_and_admin_change_is_recorded(airlock):
    with airlock.raw() as c:
        ok = c.post(airlock.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG},
                    headers={"authorization": f"Bearer {airlock.token}"})
        no = c.post(airlock.url + "/v1/chat/completions", json={"model": "eval-only", "messages": MSG},
                    headers={"authorization": f"Bearer {airlock.token}"})
    assert ok.status_code == 200 and no.status_code in (403, 404)
    r = airlock.cli("audit", "tail", "-n", "10000", "--json")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(l) for l in r.stdout.splitlines()]
    by_req = {x["request_id"]: x for x in recs if x["request_id"]}
    use = by_req[ok.headers["x-airlock-request-id"]]
    assert (use["action"], use["outcome"], use["credential"], use["model"], use["status"]) == \
        ("inference", "ok", "openai-prod", "gpt-4o-mini", 200)
    assert use["input_tokens"] > 0 and use["output_tokens"] > 0
    assert use["actor_kind"] == "token" and use["actor"].startswith("tok_") and use["subject"]
    refused = by_req[no.headers["x-airlock-request-id"]]
    assert refused["action"] == "request.refused" and refused["reason"], refused
    actions = {x["action"] for x in recs}
    assert {"credential.add", "token.mint", "secret.resolve"} <= actions, actions
    add = next(x for x in recs if x["action"] == "credential.add" and x["target"] == "openai-prod")
    assert add["actor_kind"] == "admin" and add["outcome"] == "ok"
    seqs = [x["seq"] for x in recs]
    assert seqs == sorted(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    v = airlock.cli_json("audit", "verify")
    assert v["ok"] is True and v["summary"]["records"] >= len(recs)
    # Filters
    only = airlock.cli("audit", "tail", "--json", "--action", "credential.add", "-n", "100")
    assert only.returncode == 0
    assert {json.loads(l)["action"] for l in only.stdout.splitlines()} == {"credential.add"}


def _lines(path):
    return path.read_text().splitlines()


def _verify_file(inst, path, *extra):
    r = subprocess.run([BIN, "audit", "verify", "--json", "--file", str(path),
                        "--public-key", str(inst.dir / "keys" / "audit-1.pub"), *extra],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def test_tampering_is_detected_and_named(airlock, tmp_path):
    sink = tmp_path / "checkpoints.jsonl"
    inst = Instance(airlock, "tamper", {"AIRLOCK_AUDIT__CHECKPOINT_EVERY": "5",
                                        "AIRLOCK_AUDIT__CHECKPOINT_FILE": str(sink)})
    with httpx.Client(timeout=30) as c:
        for i in range(20):
            assert inst.chat(client=c).status_code == 200
    export = tmp_path / "export.jsonl"
    r = inst.cli("audit", "export", "-o", str(export))
    assert r.returncode == 0, r.stderr
    code, out, err = _verify_file(inst, export)
    assert code == 0 and out["ok"], (out, err)
    assert out["summary"]["checkpoints_verified"] >= 4

    lines = _lines(export)
    rec_idx = [i for i, l in enumerate(lines) if json.loads(l)["type"] == "record"]
    cp_idx = [i for i, l in enumerate(lines) if json.loads(l)["type"] == "checkpoint"]

    def tampered(mutate):
        ls = list(lines)
        mutate(ls)
        p = tmp_path / "t.jsonl"
        p.write_text("\n".join(ls) + "\n")
        code, out, err = _verify_file(inst, p)
        assert code == 1, (out, err)
        return out["problem"]

    def change(ls):
        d = json.loads(ls[rec_idx[7]])
        d["output_tokens"] = 999999
        ls[rec_idx[7]] = json.dumps(d)
    p = tampered(change)
    assert p["kind"] == "changed" and p["seq"] == 8 and "record 8" in p["message"]

    p = tampered(lambda ls: ls.pop(rec_idx[11]))
    assert p["kind"] == "missing" and p["seq"] == 12

    def swap(ls):
        ls[rec_idx[3]], ls[rec_idx[4]] = ls[rec_idx[4]], ls[rec_idx[3]]
    p = tampered(swap)
    assert p["kind"] in ("missing", "reordered") and p["seq"] == 4

    # Truncated: the last records gone, a checkpoint signing them kept.
    last_cp = cp_idx[-1]
    cp_seq = json.loads(lines[last_cp])["seq"]
    p = tampered(lambda ls: [ls.pop(i) for i in reversed(rec_idx) if json.loads(lines[i])["seq"] > cp_seq - 3])
    assert p["kind"] == "truncated" and str(cp_seq) in p["message"]

    # Forged checkpoint: its head moved to another record.
    def forge(ls):
        d = json.loads(ls[cp_idx[0]])
        other = next(json.loads(ls[i]) for i in rec_idx if json.loads(ls[i])["seq"] != d["seq"])
        d["head"] = other["hash"]
        ls[cp_idx[0]] = json.dumps(d)
    p = tampered(forge)
    assert p["kind"] == "bad_signature"

    # Record and every later hash recomputed (as someone with the database would): the signed
    # checkpoint no longer matches.
    def rewrite(ls):
        import hashlib
        prev = None
        for i in rec_idx:
            d = json.loads(ls[i])
            if d["seq"] == 3:
                d["model"] = "gpt-4o"
            if prev is not None:
                d["prev"] = prev
            body = {k: v for k, v in d.items() if k not in ("hash", "type")}
            canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            d["hash"] = hashlib.sha256(b"airlock-audit-record-v1\n" + canon.encode()).hexdigest()
            prev = d["hash"]
            ls[i] = json.dumps(d)
    p = tampered(rewrite)
    next_cp = min(json.loads(lines[i])["seq"] for i in cp_idx if json.loads(lines[i])["seq"] >= 3)
    assert p["kind"] == "checkpoint_mismatch" and p["seq"] == next_cp

    # A whole-file truncation that also drops the checkpoints is caught by the separate copy.
    assert sink.exists() and len(_lines(sink)) >= 4
    short = tmp_path / "short.jsonl"
    cut_at = next(i for i in cp_idx if json.loads(lines[i])["seq"] >= 10)
    short.write_text("\n".join(lines[: cut_at + 1]) + "\n")
    code, out, _ = _verify_file(inst, short)
    assert code == 0, "without the external copy, a clean cut at a checkpoint is undetectable"
    # Cut between checkpoints, the records after the last signature are vouched for by nothing.
    short.write_text("\n".join(lines[: rec_idx[8] + 1]) + "\n")
    code, out, _ = _verify_file(inst, short)
    signed_to = max(json.loads(lines[i])["seq"] for i in cp_idx if json.loads(lines[i])["seq"] <= 9)
    assert code == 1 and out["problem"]["kind"] == "unsigned" and out["problem"]["seq"] == signed_to + 1, out
    code, out, _ = _verify_file(inst, short, "--partial")
    assert code == 0, out
    short.write_text("\n".join(lines[: cut_at + 1]) + "\n")
    code, out, _ = _verify_file(inst, short, "--checkpoints", str(sink))
    assert code == 1 and out["problem"]["kind"] == "truncated"

    # The same against the database itself (through the admin API).
    inst.stop()
    db = sqlite3.connect(inst.db)
    with db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET credential = 'someone-else' WHERE seq = 6")
    db.close()
    inst.start()
    r = inst.cli("audit", "verify", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    prob = json.loads(r.stdout)["problem"]
    assert prob["kind"] == "changed" and prob["seq"] == 6
    r = inst.cli("audit", "verify")
    assert r.returncode == 1 and "record 6" in r.stderr


def test_export_verifies_offline_with_only_the_public_key(airlock, tmp_path):
    inst = Instance(airlock, "offline", {"AIRLOCK_AUDIT__CHECKPOINT_EVERY": "3"})
    with httpx.Client(timeout=30) as c:
        for _ in range(7):
            assert inst.chat(client=c).status_code == 200
        assert inst.chat(stream=True, client=c).status_code == 200
    export = tmp_path / "audit.jsonl"
    assert inst.cli("audit", "export", "-o", str(export)).returncode == 0
    public = (inst.dir / "keys" / "audit-1.pub").read_text().strip()
    inst.stop()
    # Nothing but the file and the key: no server, no state directory.
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(export, alone / "audit.jsonl")
    r = subprocess.run([BIN, "audit", "verify", "--file", str(alone / "audit.jsonl"), "--public-key", public],
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "intact" in r.stdout, r.stdout + r.stderr
    # The wrong key: every checkpoint fails.
    other = Instance(airlock, "other-key")
    wrong = (other.dir / "keys" / "audit-1.pub").read_text().strip()
    r = subprocess.run([BIN, "audit", "verify", "--json", "--file", str(alone / "audit.jsonl"), "--public-key", wrong],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and json.loads(r.stdout)["problem"]["kind"] == "bad_signature"
    other.stop()
    # Usage errors are exit 2.
    r = subprocess.run([BIN, "audit", "verify", "--file", str(alone / "audit.jsonl")], capture_output=True, text=True)
    assert r.returncode == 2 and "public-key" in r.stderr


def _block_audit_writes(inst):
    db = sqlite3.connect(inst.db, timeout=10)
    with db:
        db.execute("CREATE TRIGGER audit_blocked BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    db.close()


def _unblock_audit_writes(inst):
    db = sqlite3.connect(inst.db, timeout=10)
    with db:
        db.execute("DROP TRIGGER audit_blocked")
    db.close()


def _mock_requests(a):
    return httpx.get(f"http://127.0.0.1:{a.mocks['good']}/mock/stats").json()["requests"]


def _served(inst):
    db = sqlite3.connect(inst.db, timeout=10)
    n = db.execute("SELECT COUNT(*) FROM usage WHERE outcome = 'ok'").fetchone()[0]
    db.close()
    return n


def test_fail_closed_refuses_when_the_audit_log_cannot_be_written(airlock):
    inst = Instance(airlock, "closed")
    with httpx.Client(timeout=30) as c:
        assert inst.chat(client=c).status_code == 200
        _block_audit_writes(inst)
        # A stream is not served at all: its use must be on record before the first event.
        r = inst.chat(stream=True, client=c)
        assert r.status_code == 503 and b"[DONE]" not in r.content, r.text
        assert r.json()["error"]["code"] == "audit_unavailable"
        _unblock_audit_writes(inst)
        assert inst.chat(client=c).status_code in (200, 503)
        assert inst.chat(client=c).status_code == 200
        served_before = _served(inst)
        _block_audit_writes(inst)
        r = inst.chat(client=c)
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable", r.text
        assert "audit" in r.json()["error"]["message"]
        # Now refused before any provider is called.
        before = _mock_requests(airlock)
        for stream in (False, True):
            r = inst.chat(stream=stream, client=c)
            assert r.status_code == 503, r.text
        assert _mock_requests(airlock) == before, "no provider call while the log is unwritable"
        # The official SDK sees a server error, not a completion.
        with pytest.raises(openai.APIStatusError) as e:
            openai.OpenAI(base_url=inst.url + "/v1", api_key=inst.token, max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=MSG)
        assert e.value.status_code == 503
        # None of them was served, and no record says otherwise.
        assert _served(inst) == served_before
        _unblock_audit_writes(inst)
        statuses = [inst.chat(client=c).status_code for _ in range(3)]
        assert statuses[-1] == 200 and statuses.count(503) <= 1, statuses
    # The record of the response withheld after the provider answered is written once the log
    # works again, and says what the client got.
    time.sleep(1.5)
    withheld = [x for x in inst.records("--action", "inference") if x["outcome"] == "not_answered"]
    assert withheld and all(x["status"] == 503 and "not answered" in x["reason"] for x in withheld), withheld
    r = inst.cli("audit", "verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr


def test_fail_open_serves_and_counts(airlock):
    inst = Instance(airlock, "open", {"AIRLOCK_AUDIT__ON_FAILURE": "open"})
    _block_audit_writes(inst)
    with httpx.Client(timeout=30) as c:
        assert inst.chat(client=c).status_code == 200
        assert inst.chat(stream=True, client=c).status_code == 200
        metrics = c.get(inst.url + "/metrics").text
    unrecorded = next(int(l.split()[1]) for l in metrics.splitlines() if l.startswith("airlock_audit_unrecorded_total "))
    assert unrecorded >= 2
    assert "airlock_audit_healthy 0" in metrics
    log = (airlock.tmp / "open-server.log").read_text()
    assert "could not be written" in log


def test_kill_9_under_load_loses_no_answered_request(airlock):
    inst = Instance(airlock, "kill9", {"AIRLOCK_AUDIT__CHECKPOINT_EVERY": "25"})
    done = []          # request ids whose response completed
    stop = threading.Event()
    lock = threading.Lock()

    def worker(n):
        with httpx.Client(timeout=10) as c:
            i = 0
            while not stop.is_set():
                i += 1
                streaming = (i + n) % 2 == 0
                model = "slow-1" if streaming and n % 2 else "gpt-4o-mini"
                body = {"model": model, "messages": MSG, "stream": streaming}
                h = {"authorization": f"Bearer {inst.token}"}
                try:
                    with c.stream("POST", inst.url + "/v1/chat/completions", json=body, headers=h) as r:
                        data = b"".join(r.iter_bytes())
                        rid = r.headers.get("x-airlock-request-id")
                    complete = r.status_code == 200 and (b"[DONE]" in data if streaming else data.rstrip().endswith(b"}"))
                    if complete:
                        with lock:
                            done.append(rid)
                except (httpx.HTTPError, OSError):
                    pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    inst.proc.send_signal(signal.SIGKILL)
    inst.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert len(done) > 20, f"the load really ran ({len(done)} completed)"
    inst.start()
    r = inst.cli("audit", "verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    recorded = {x["request_id"] for x in inst.records("--action", "inference") if x["outcome"] == "ok"}
    missing = [rid for rid in done if rid not in recorded]
    assert not missing, f"{len(missing)} answered requests have no audit record"
    # And the chain keeps growing from where it was after the restart.
    assert inst.chat().status_code == 200
    assert inst.cli("audit", "verify").returncode == 0


def test_inventory_shows_who_used_a_credential_and_its_spend(airlock):
    inst = Instance(airlock, "inventory", env={"AIRLOCK_ROTATION__MAX_AGE_DAYS": "0"},
                    toml_extra='[pricing."gpt-4o-mini"]\ninput = 1.5\noutput = 6.0')
    second = json.loads(inst.cli("token", "mint", "--env", "prod", "--model", "gpt-*", "--subject", "batch-job",
                                 "--json").stdout)
    with httpx.Client(timeout=30) as c:
        for _ in range(3):
            assert inst.chat(client=c).status_code == 200
        h = {"authorization": f"Bearer {second['token']}"}
        r = c.post(inst.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG}, headers=h)
        assert r.status_code == 200
    v = json.loads(inst.cli("credential", "show", "prod", "--json").stdout)
    act = v["activity"]
    assert act["requests"] == 4
    subjects = {x["name"]: x["requests"] for x in act["identities"]}
    assert subjects.get("batch-job") == 1 and sum(subjects.values()) == 4, subjects
    assert len(act["tokens"]) == 2 and act["client_ips"][0]["name"] == "127.0.0.1"
    # Spend = tokens the provider reported times the configured price, record by record.
    uses = [x for x in inst.records("--action", "inference", "--credential", "prod")]
    assert len(uses) == 4 and all(x["input_tokens"] and x["output_tokens"] for x in uses)
    assert all(x["cost_micros"] == round(x["input_tokens"] * 1.5 + x["output_tokens"] * 6.0) for x in uses)
    assert act["input_tokens"] == sum(x["input_tokens"] for x in uses)
    assert act["cost_micros"] == sum(x["cost_micros"] for x in uses) > 0
    # A zero-day rotation policy makes every key overdue.
    assert v["rotation"]["overdue"] is True and v["rotation"]["max_age_days"] == 0
    text = inst.cli("credential", "show", "prod")
    assert text.returncode == 0 and "batch-job (1)" in text.stdout and "OVERDUE" in text.stdout
    assert "$0.0002" in text.stdout, text.stdout


def _serve_once(inst, timeout=30):
    """Runs `serve` in the foreground and returns it once it exits (it should refuse to start)."""
    import os
    env = dict(os.environ)
    env.update(inst.env)
    r = subprocess.run([BIN, "serve", "--config", inst.config], capture_output=True, text=True,
                       env=env, timeout=timeout)
    inst.a.captured.append(r.stdout.encode() + r.stderr.encode())
    return r


def _sql(inst, *statements):
    db = sqlite3.connect(inst.db, timeout=10)
    with db:
        for s in statements:
            db.execute(s)
    db.close()


def test_a_restart_never_signs_a_rewritten_log(airlock, tmp_path):
    # No periodic checkpoint while it runs: only the signed head covers the records.
    inst = Instance(airlock, "restart", {"AIRLOCK_AUDIT__CHECKPOINT_EVERY": "1000000",
                                         "AIRLOCK_AUDIT__CHECKPOINT_INTERVAL_SECS": "3600"})
    with httpx.Client(timeout=30) as c:
        for _ in range(4):
            assert inst.chat(client=c).status_code == 200
    # Every batch signs its head: even without a periodic checkpoint nothing is unsigned.
    time.sleep(1.2)
    r = inst.cli("audit", "verify", "--json", "--max-unsigned-age", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["summary"]["unsigned_tail"] == 0
    inst.stop(signal.SIGKILL)
    (last,) = sqlite3.connect(inst.db).execute("SELECT MAX(seq) FROM audit").fetchone()
    # A record of the unsigned tail changed while airlock was down: it must not start and sign it.
    _sql(inst, "DROP TRIGGER audit_no_update",
         f"UPDATE audit SET model = 'gpt-4o' WHERE seq = {last - 1}")
    r = _serve_once(inst)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "not what was signed" in r.stderr and f"record {last - 1}" in r.stderr, r.stderr
    assert sqlite3.connect(inst.db).execute("SELECT COUNT(*) FROM audit_checkpoints").fetchone()[0] == 0
    # Put back, it starts, continues the chain and signs it when stopped.
    _sql(inst, f"UPDATE audit SET model = 'gpt-4o-mini' WHERE seq = {last - 1}")
    inst.start()
    assert inst.chat().status_code == 200
    inst.stop()
    assert sqlite3.connect(inst.db).execute("SELECT MAX(seq) FROM audit_checkpoints").fetchone()[0] > last
    # The whole database replaced: the checkpoint file next to it knows better.
    sink = inst.dir / "audit-checkpoints.jsonl"
    assert sink.exists() and json.loads(_lines(sink)[-1])["type"] == "checkpoint"
    saved = tmp_path / "saved.db"

    def drop_sidecars():
        for suffix in ("-wal", "-shm"):
            p = inst.dir / f"airlock.db{suffix}"
            if p.exists():
                p.unlink()
    _sql(inst, "PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.move(inst.db, saved)
    drop_sidecars()
    r = _serve_once(inst)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "the database was replaced or rewritten" in r.stderr, r.stderr
    inst.db.unlink()
    drop_sidecars()
    shutil.move(saved, inst.db)
    # A missing audit key is not silently replaced while the log has records.
    key = inst.dir / "keys" / "audit-1.key"
    hidden = tmp_path / "audit-1.key"
    shutil.move(key, hidden)
    r = _serve_once(inst)
    assert r.returncode != 0 and "audit signing key" in r.stderr and "missing" in r.stderr, r.stderr
    assert not key.exists()
    shutil.move(hidden, key)
    inst.start()
    assert inst.cli("audit", "verify").returncode == 0
    inst.stop()


def test_model_lists_and_partial_exports(airlock, tmp_path):
    inst = Instance(airlock, "models", {"AIRLOCK_AUDIT__CHECKPOINT_EVERY": "4"})
    # A second server on the same state directory (another port) refuses before touching it.
    before = _lines(inst.dir / "audit-checkpoints.jsonl") if (inst.dir / "audit-checkpoints.jsonl").exists() else []
    import os
    env = dict(os.environ)
    env.update(inst.env)
    r = subprocess.run([BIN, "serve", "--config", inst.config, "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode != 0 and "another airlock is serving" in r.stderr, r.stderr
    after = _lines(inst.dir / "audit-checkpoints.jsonl") if (inst.dir / "audit-checkpoints.jsonl").exists() else []
    assert before == after
    r = httpx.get(inst.url + "/v1/models", headers={"authorization": f"Bearer {inst.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    listed = [x for x in inst.records("--action", "models.list") if x["request_id"] == r.headers["x-airlock-request-id"]]
    assert listed and {x["credential"] for x in listed} <= {"prod", "slow"}, listed
    assert all(x["actor"].startswith("tok_") and x["outcome"] == "ok" for x in listed), listed
    with httpx.Client(timeout=30) as c:
        for _ in range(6):
            assert inst.chat(client=c).status_code == 200
    mid = inst.records()[-3]
    export = tmp_path / "since.jsonl"
    r = inst.cli("audit", "export", "--since", str(mid["ts"]), "-o", str(export))
    assert r.returncode == 0, r.stderr
    seqs = [json.loads(l)["seq"] for l in _lines(export) if json.loads(l)["type"] == "record"]
    assert seqs and seqs[0] <= mid["seq"] and seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
    # An export that does not start at record 1 is refused unless declared partial.
    code, out, err = _verify_file(inst, export)
    assert code == 1 and out["problem"]["kind"] == "partial", (out, err)
    code, out, err = _verify_file(inst, export, "--partial")
    assert code == 0 and out["ok"], (out, err)


def _forge_after(inst, last, n, ts=None, actor="tok_FRAMED"):
    """Appends `n` well-formed records after `last` (a record as JSON), as someone with write
    access to the database and the published encoding would."""
    import hashlib
    db = sqlite3.connect(inst.db, timeout=10)
    prev = last
    with db:
        for i in range(n):
            rec = {k: prev.get(k) for k in prev if k not in ("hash", "type")}
            rec.update(seq=prev["seq"] + 1, prev=prev["hash"], actor=actor, action="inference",
                       outcome="ok", ts=ts if ts is not None else prev["ts"], output_tokens=999999)
            canon = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            rec["hash"] = hashlib.sha256(b"airlock-audit-record-v1\n" + canon.encode()).hexdigest()
            cols = list(rec)
            db.execute(f"INSERT INTO audit ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                       [rec[c] for c in cols])
            prev = rec
    db.close()
    return prev


def test_forged_records_are_never_signed(airlock):
    inst = Instance(airlock, "forged", {"AIRLOCK_AUDIT__CHECKPOINT_EVERY": "50",
                                        "AIRLOCK_AUDIT__CHECKPOINT_INTERVAL_SECS": "1"})
    with httpx.Client(timeout=30) as c:
        assert inst.chat(client=c).status_code == 200
        time.sleep(1.5)
        # While it runs: a record slipped in behind the writer's back. The writer's next append
        # collides; it must stop appending rather than continue from (and sign) the forgery.
        forged = _forge_after(inst, inst.records()[-1], 1)
        r = inst.chat(client=c)
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable", r.text
        time.sleep(2.5)
        assert inst.chat(client=c).status_code == 503
        # (a refusal sent before the body was read closes its connection: ask on a new one)
        assert "airlock_audit_healthy 0" in httpx.get(inst.url + "/metrics", timeout=30).text
    signed = sqlite3.connect(inst.db).execute("SELECT MAX(seq) FROM audit_checkpoints").fetchone()[0]
    assert signed < forged["seq"], "the running server signed a record it did not write"
    assert "changed under the writer" in (airlock.tmp / "forged-server.log").read_text()
    inst.stop(signal.SIGKILL)
    # While it is down: more records than a running airlock ever leaves unsigned.
    _forge_after(inst, forged, 60)
    r = _serve_once(inst)
    assert r.returncode != 0 and "will not sign them" in r.stderr and "61 records" in r.stderr, r.stderr
    # An operator who looked at them may accept them; that acceptance is on record.
    inst.proc = inst.a.spawn("forged-accepted", ["serve", "--config", inst.config, "--accept-unsigned-tail"], inst.env)
    wait_port(inst.port)
    accepted = inst.records("--action", "audit.tail_accepted")
    assert len(accepted) == 1 and "61 records" in accepted[0]["reason"], accepted
    assert inst.cli("audit", "verify").returncode == 0
    inst.stop()
    sink = inst.dir / "audit-checkpoints.jsonl"
    whole = sink.read_text()
    # An old, genuine line appended again does not pass for the latest checkpoint.
    sink.write_text(whole + whole.splitlines()[0] + "\n")
    r = _serve_once(inst)
    assert r.returncode != 0 and "an old line was appended again" in r.stderr, r.stderr
    # Nor does a missing file, while the database has checkpoints.
    sink.unlink()
    r = _serve_once(inst)
    assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr
    # A checkpoint line torn by a crash is cut off and copied again at the next start.
    sink.write_text(whole + whole.splitlines()[-1][:40])
    inst.start()
    assert sink.read_text().endswith("\n")
    assert all(json.loads(l)["type"] == "checkpoint" for l in sink.read_text().splitlines())
    inst.stop()
