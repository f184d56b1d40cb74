"""Invariant I8 (bad input gets a clear 4xx in the client's dialect) and the CLI contract."""
import json
import os
import socket
import time

import httpx
import openai
import pytest


def post(a, path, body, token=None, headers=None):
    h = {"authorization": f"Bearer {token or a.token}", "content-type": "application/json"}
    h.update(headers or {})
    with a.raw() as c:
        return c.post(a.url + path, content=body, headers=h)


def test_malformed_json_and_missing_model(airlock):
    r = post(airlock, "/v1/chat/completions", b"{nope")
    assert r.status_code == 400
    assert "malformed JSON" in r.json()["error"]["message"]
    r = post(airlock, "/v1/messages", b"[1,2]")
    assert r.status_code == 400 and r.json()["type"] == "error", "Anthropic dialect"
    r = post(airlock, "/v1/chat/completions", b'{"messages": []}')
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]
    r = post(airlock, "/v1/chat/completions", b'{"model": 7}')
    assert r.status_code == 400
    for bad in ["gpt-4o*", "x" * 257, "gpt 4o", "gpt\u00e94o", "a\nb"]:
        r = post(airlock, "/v1/chat/completions", json.dumps({"model": bad, "messages": []}).encode())
        assert r.status_code == 400 and "256 characters" in r.json()["error"]["message"], bad


def test_oversize_body(airlock):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 70000}]}).encode()
    r = post(airlock, "/v1/chat/completions", body)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    with pytest.raises(openai.APIStatusError) as e:
        airlock.openai(airlock.token).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 70000}])
    assert e.value.status_code == 413


def test_slow_client_gets_408(airlock):
    port = int(airlock.url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {airlock.token}\r\n"
              f"content-type: application/json\r\ncontent-length: 500\r\n\r\n{{\"model\":".encode())
    start = time.monotonic()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert time.monotonic() - start < 10


def test_unknown_route_and_method(airlock):
    with airlock.raw() as c:
        r = c.get(airlock.url + "/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_route"
        r = c.get(airlock.url + "/v1/chat/completions")
        assert r.status_code == 405
        r = c.get(airlock.url + "/v1/messages/nothing")
        assert r.status_code == 404 and r.json()["type"] == "error"
        assert c.get(airlock.url + "/healthz").status_code == 200
        assert c.get(airlock.url + "/readyz").status_code == 200


def test_admin_api_denies_by_default(airlock):
    with airlock.raw() as c:
        assert c.get(airlock.url + "/admin/v1/credentials").status_code == 401
        r = c.get(airlock.url + "/admin/v1/credentials", headers={"authorization": f"Bearer {airlock.token}"})
        assert r.status_code == 401 and "client tokens cannot" in r.json()["error"]["message"]
        forged = airlock.admin[:-4] + "0000"
        assert c.get(airlock.url + "/admin/v1/credentials", headers={"authorization": f"Bearer {forged}"}).status_code == 401
        r = c.get(airlock.url + "/admin/v1/unknown", headers={"authorization": f"Bearer {airlock.admin}"})
        assert r.status_code == 404


def test_cli_contract(airlock):
    m = airlock.mint("--model", "gpt-4o-mini", "--env", "prod", "--ttl", "15m")
    assert m["token"].startswith("alk_tok_") and m["id"].startswith("tok_") and m["expires_at"]
    listed = airlock.cli_json("token", "list")
    assert any(t["id"] == m["id"] for t in listed["tokens"])
    creds = airlock.cli_json("credential", "list")["credentials"]
    prod = next(c for c in creds if c["name"] == "openai-prod")
    assert prod["fingerprint"].startswith("hmac-sha256:") and prod["last4"] == airlock.canary[-4:]
    assert prod["secret_ref"] == "env:OPENAI_KEY_CANARY"
    airlock.openai(airlock.token).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    time.sleep(0.3)  # usage is written in batches
    shown = airlock.cli_json("credential", "show", "openai-prod")
    assert shown["usage"]["requests"] >= 1 and shown["last_used_at"]
    text = airlock.cli("credential", "list")
    assert text.returncode == 0 and "openai-prod" in text.stdout

    # exit codes: 2 usage/config, 3 remote failure
    assert airlock.cli("credential", "show", "no-such").returncode == 2
    assert airlock.cli("token", "mint", "--env", "prod", "--ttl", "48h").returncode == 2
    assert airlock.cli("token", "mint", "--credential", "no-such", "--env", "prod").returncode == 2
    assert airlock.cli("token", "mint", "--credential", "openai-eval", "--env", "prod").returncode == 2
    assert airlock.cli("credential", "list", admin=False, env={"AIRLOCK_ADMIN_TOKEN": ""}).returncode == 2
    assert airlock.cli("credential", "list", env={"AIRLOCK_URL": "http://127.0.0.1:1"}).returncode == 3
    r = airlock.cli("credential", "add", "x", "--provider", "openai", "--env", "prod", "--secret", "sk-pasted-key-value")
    assert r.returncode == 2 and "never passed on the command line" in r.stderr
    r = airlock.cli("credential", "add", "x", "--provider", "openai", "--env", "prod", "--secret", "env:NOT_SET_ANYWHERE_X")
    assert r.returncode == 2 and "NOT_SET_ANYWHERE_X" in r.stderr
    r = airlock.cli("credential", "add", "openai-prod", "--provider", "openai", "--env", "prod", "--secret", "env:OPENAI_KEY_CANARY")
    assert r.returncode == 2 and "already exists" in r.stderr
    r = airlock.cli("token", "attenuate", "not-a-token", "--model", "x")
    assert r.returncode == 2


def test_credentials_cannot_point_at_airlocks_own_secrets(airlock, tmp_path):
    """A credential's secret is sent to its base URL: a reference to the signing key, the HMAC
    key or the server's own AIRLOCK_* settings would hand them to whoever picked that URL."""
    def add(ref):
        return airlock.cli("credential", "add", "exfil", "--provider", "openai-compatible", "--env", "prod",
                           "--secret", ref, "--base-url", "http://127.0.0.1:9/v1")
    keys = airlock.state / "keys"
    link = tmp_path / "looks-harmless.key"
    link.symlink_to(keys / "root-1.key")
    for ref in [f"file:{keys / 'root-1.key'}", f"file:{keys / 'hmac.key'}", f"file:{link}",
                f"file:{tmp_path / '..' / tmp_path.name / 'looks-harmless.key'}"]:
        r = add(ref)
        assert r.returncode == 2 and "own state or key directory" in r.stderr, (ref, r.stderr)
    r = add("env:AIRLOCK_LOG__LEVEL")
    assert r.returncode == 2 and "configure airlock" in r.stderr
    r = add(f"file:{tmp_path}")
    assert r.returncode == 2 and "not a regular file" in r.stderr
    assert airlock.cli("credential", "show", "exfil").returncode == 2, "nothing was added"


def test_init_refuses_to_overwrite(airlock):
    import subprocess
    from conftest import BIN
    r = subprocess.run([BIN, "init", "--dir", str(airlock.state), "--json"], capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    mode = (airlock.state / "keys" / "root-1.key").stat().st_mode & 0o777
    assert mode == 0o600


def test_unauthenticated_requests_are_counted_not_stored(airlock):
    def unauth_count():
        with airlock.raw() as c:
            text = c.get(airlock.url + "/metrics").text
        return int(next(l.split()[1] for l in text.splitlines() if l.startswith("airlock_unauthenticated_total ")))
    before = unauth_count()
    for _ in range(5):
        r = post(airlock, "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": []}', token="alk_tok_nonsense")
        assert r.status_code == 401
    assert unauth_count() - before >= 5
    time.sleep(0.3)
    with airlock.raw() as c:
        rows = c.get(airlock.url + "/admin/v1/usage/recent?limit=10000",
                     headers={"authorization": f"Bearer {airlock.admin}"}).json()["usage"]
    assert rows, "authenticated requests are stored"
    assert all(r["token_id"] for r in rows), "no row without a verified token"


def test_admin_api_answers_malformed_input_in_json(airlock):
    h = {"authorization": f"Bearer {airlock.admin}", "content-type": "application/json"}
    with airlock.raw() as c:
        for r in [c.post(airlock.url + "/admin/v1/credentials", content=b"{nope", headers=h),
                  c.post(airlock.url + "/admin/v1/credentials", content=b'{"name": "x"}', headers=h),
                  c.get(airlock.url + "/admin/v1/usage/recent?limit=many", headers=h)]:
            assert 400 <= r.status_code < 500, r.text
            body = r.json()
            assert body["error"]["code"] == "invalid_request" and body["error"]["message"], body
        # A malformed body that holds a key: the error (and its audit record) must not echo it.
        r = c.post(airlock.url + "/admin/v1/inventory/match", headers=h,
                   content=json.dumps({"candidates": airlock.canary}).encode())
        assert r.status_code == 422 or r.status_code == 400, r.text
        assert airlock.canary not in r.text and "candidates" in r.json()["error"]["message"]


def test_a_key_pasted_as_a_reference_is_echoed_nowhere(airlock):
    """The audit log is append-only: a key typed where a reference belongs must not reach it."""
    for ref in [f"env:{airlock.canary}", airlock.canary, f"file:{airlock.canary}"]:
        r = airlock.cli("credential", "add", "oops", "--provider", "openai", "--env", "prod", "--secret", ref)
        assert r.returncode == 2 and airlock.canary not in r.stderr + r.stdout, r.stderr
    # A key pasted as the model name: refused, and recorded without it.
    with airlock.raw() as c:
        resp = c.post(airlock.url + "/v1/chat/completions",
                      json={"model": airlock.canary, "messages": [{"role": "user", "content": "hi"}]},
                      headers={"authorization": f"Bearer {airlock.token}"})
    assert resp.status_code == 400 and "looks like a key" in resp.text and airlock.canary not in resp.text
    r = airlock.cli("audit", "tail", "--json", "--action", "request.refused", "-n", "50")
    (rec,) = [x for x in map(json.loads, r.stdout.splitlines()) if x["request_id"] == resp.headers["x-airlock-request-id"]]
    assert rec["model"] is None and airlock.canary not in r.stdout
    r = airlock.cli("audit", "tail", "--json", "--action", "credential.add", "-n", "50")
    refused = [json.loads(l) for l in r.stdout.splitlines() if json.loads(l)["outcome"] == "refused"]
    assert len(refused) >= 3 and all(x["reason"] for x in refused), [(x["status"], x["target"], x["request_id"]) for x in refused if not x["reason"]]
    assert airlock.canary not in r.stdout


def test_airlock_run_gives_the_command_a_token_and_nothing_else(airlock, tmp_path):
    import sys
    script = tmp_path / "job.py"
    script.write_text(
        "import os, sys\n"
        "from openai import OpenAI\n"
        "assert 'AIRLOCK_ADMIN_TOKEN' not in os.environ, 'the admin key was passed on'\n"
        "assert os.environ['OPENAI_API_KEY'].startswith('alk_tok_')\n"
        "assert os.environ['ANTHROPIC_API_KEY'] == os.environ['OPENAI_API_KEY']\n"

        "c = OpenAI(max_retries=0)  # configured only by the environment airlock run set\n"
        "r = c.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print('reply:', r.choices[0].message.content)\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    r = airlock.cli("run", "--env", "prod", "--model", "gpt-*", "--ttl", "5m", "--",
                    sys.executable, str(script), "0", env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "reply: Hello from the airlock mock provider" in r.stdout
    # The exit code is passed through, and the token is revoked once the command ends.
    r = airlock.cli("run", "--env", "prod", "--model", "gpt-*", "--", sys.executable, str(script), "7", env=env)
    assert r.returncode == 7, (r.stdout, r.stderr)
    tokens = airlock.cli_json("token", "list", "--all")["tokens"]
    runs = [t for t in tokens if t["subject"] == "run:" + os.path.basename(sys.executable)]
    assert len(runs) == 2 and all(t["revoked_at"] for t in runs), runs
    # The admin key stays out of reach of the command even though airlock run itself holds it
    # in its environment: airlock run is not dumpable, so a command of the same (non-root)
    # user cannot read /proc/PID/environ. Both run as `nobody` here (root reads everything).
    import shutil
    import tempfile
    if os.geteuid() == 0 and shutil.which("setpriv"):
        d = tempfile.mkdtemp(prefix="airlock-run-")
        os.chmod(d, 0o755)
        probe = os.path.join(d, "probe.py")
        with open(probe, "w") as f:
            f.write("import os\n"
                    "try:\n"
                    "    data = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
                    "except OSError as e:\n"
                    "    print('refused', e.errno); raise SystemExit(0)\n"
                    "raise SystemExit(3 if b'alk_admin_' in data else 4)\n")
        os.chmod(probe, 0o644)
        py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "/bin/sh"
        r = airlock.cli("run", "--env", "prod", "--", py, probe,
                        env={"AIRLOCK_BIN_WRAP": ""}, wrap=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        assert r.returncode == 0 and "refused" in r.stdout, (r.returncode, r.stdout, r.stderr)
        shutil.rmtree(d)
    else:
        pytest.fail("needs root and setpriv to run the probe as an unprivileged user")
    # A command that cannot start: a usage error, and its token is revoked too.
    r = airlock.cli("run", "--env", "prod", "--subject", "run-missing", "--", "/nonexistent/prog", env=env)
    assert r.returncode == 2 and "cannot run" in r.stderr, r.stderr
    tokens = airlock.cli_json("token", "list", "--all")["tokens"]
    assert all(t["revoked_at"] for t in tokens if t["subject"] == "run-missing")
    assert any(t["subject"] == "run-missing" for t in tokens)
    # Nothing to run is a usage error.
    assert airlock.cli("run", "--env", "prod").returncode == 2
