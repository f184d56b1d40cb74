"""End-to-end fixtures: real `airlock serve` in front of `airlock mock-provider` instances,
driven by the official OpenAI and Anthropic SDKs.

A canary provider key is generated at run time (never committed). Every byte the SDK clients
receive is recorded, so the last test (test_zz_canary.py) can check invariant I1 across the
database, the server's debug log, every response and /metrics.
"""
import json
import os
import pathlib
import secrets
import socket
import string
import subprocess
import time

import pytest

REQUIRE_ALL = os.environ.get("AIRLOCK_REQUIRE_ALL") == "1"


def _need(module):
    """Imports a real part the tests use; a missing one skips, or fails under AIRLOCK_REQUIRE_ALL."""
    try:
        return __import__(module)
    except ImportError as e:
        if REQUIRE_ALL:
            raise
        pytest.skip(f"{module} is not installed ({e}); run scripts/test.sh", allow_module_level=True)


httpx = _need("httpx")
_need("openai")
_need("anthropic")

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("AIRLOCK_BIN", str(ROOT / "target" / "debug" / "airlock"))
ALNUM = string.ascii_letters + string.digits


def rand(n, alphabet=ALNUM):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def make_canary():
    # Shaped like an OpenAI project key so that anything keyed on that shape would catch it.
    return "sk-proj-" + rand(40) + "T3BlbkFJ" + rand(40)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def recording_client(mod, sink):
    """An HTTP client (of `mod`: httpx, or httpx2 which newer Anthropic SDKs use) that records
    every response header and body byte it receives."""

    class Recording(mod.HTTPTransport):
        def handle_request(self, request):
            resp = super().handle_request(request)
            sink.append("\n".join(f"{k}: {v}" for k, v in resp.headers.items()).encode())
            inner = resp.stream

            class Tee(mod.SyncByteStream):
                def __iter__(self):
                    for chunk in inner:
                        sink.append(bytes(chunk))
                        yield chunk

                def close(self):
                    inner.close()

            return mod.Response(status_code=resp.status_code, headers=resp.headers, stream=Tee(),
                                extensions=resp.extensions, request=request)

    return mod.Client(transport=Recording(), timeout=30)


class Airlock:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []
        self.captured = []
        self.canary = make_canary()
        self.mocks = {}

    # -- processes --------------------------------------------------------------------
    def spawn(self, name, args, env=None):
        log = open(self.tmp / f"{name}.log", "wb")
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.Popen([BIN, *args], stdout=log, stderr=subprocess.STDOUT, env=e)
        self.procs.append(p)
        return p

    def mock(self, name, *extra, key=True):
        port = free_port()
        env = {"AIRLOCK_MOCK_EXPECT_KEY": self.canary} if key else {}
        self.spawn(f"mock-{name}", ["mock-provider", "--listen", f"127.0.0.1:{port}", "--name", name, *extra], env)
        wait_port(port)
        self.mocks[name] = port
        return port

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    # -- CLI ----------------------------------------------------------------------------
    def cli(self, *args, admin=True, env=None, wrap=()):
        e = dict(os.environ)
        e["AIRLOCK_URL"] = self.url
        if admin:
            e["AIRLOCK_ADMIN_TOKEN"] = self.admin
        e.update(env or {})
        r = subprocess.run([*wrap, BIN, *args], capture_output=True, text=True, env=e, timeout=60)
        self.captured.append(r.stdout.encode() + r.stderr.encode())
        return r

    def cli_json(self, *args):
        r = self.cli(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def mint(self, *args):
        return self.cli_json("token", "mint", *args)

    # -- SDK clients --------------------------------------------------------------------
    def http(self):
        return recording_client(httpx, self.captured)

    def openai(self, token, **kw):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=token, max_retries=0,
                             http_client=self.http(), **kw)

    def anthropic(self, token, **kw):
        import anthropic
        try:
            import httpx2 as mod  # anthropic >= 2.x brings httpx2 and refuses httpx clients
        except ImportError:
            mod = httpx
        return anthropic.Anthropic(base_url=self.url, api_key=token, max_retries=0,
                                   http_client=recording_client(mod, self.captured), **kw)

    def raw(self):
        return self.http()


@pytest.fixture(scope="session")
def airlock(tmp_path_factory):
    if not os.path.exists(BIN):
        msg = f"airlock binary not found at {BIN}; run scripts/test.sh or set AIRLOCK_BIN"
        if REQUIRE_ALL:
            pytest.fail(msg)
        pytest.skip(msg)
    tmp = tmp_path_factory.mktemp("airlock")
    a = Airlock(tmp)
    try:
        good = a.mock("good")
        slow = a.mock("slow", "--chunk-delay-ms", "300")
        fail500 = a.mock("fail500", "--fail-status", "500", key=False)
        fail429 = a.mock("fail429", "--fail-status", "429", key=False)
        fail400 = a.mock("fail400", "--fail-status", "400", key=False)
        closed = free_port()

        port = free_port()
        a.url = f"http://127.0.0.1:{port}"
        state = tmp / "state"
        r = subprocess.run([BIN, "init", "--dir", str(state), "--listen", f"127.0.0.1:{port}", "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        a.admin = out["admin_token"]
        a.config = out["config"]
        a.state = state
        key_file = tmp / "anthropic.key"
        key_file.write_text(a.canary + "\n")
        key_file.chmod(0o600)
        a.server_log = tmp / "server.log"
        a.spawn("server", ["serve", "--config", a.config], {
            "OPENAI_KEY_CANARY": a.canary,
            "AIRLOCK_LOG__LEVEL": "debug",
            "AIRLOCK_LIMITS__BODY_TIMEOUT_SECS": "2",
            "AIRLOCK_LIMITS__MAX_BODY_BYTES": "65536",
            # Token exchange: the expiry test waits past exp + leeway.
            "AIRLOCK_OIDC__LEEWAY_SECS": "1",
        })
        wait_port(port)

        def add(name, provider, env, secret, base, models, prio=100):
            r = a.cli("credential", "add", name, "--provider", provider, "--env", env, "--secret", secret,
                      "--base-url", base, "--models", models, "--priority", str(prio))
            assert r.returncode == 0, r.stderr

        g = f"http://127.0.0.1:{good}"
        add("openai-prod", "openai-compatible", "prod", "env:OPENAI_KEY_CANARY", g + "/v1", "gpt-*,text-embedding-*", 10)
        add("anthropic-prod", "anthropic", "prod", f"file:{key_file}", g, "claude-*", 10)
        add("openai-eval", "openai-compatible", "eval", "env:OPENAI_KEY_CANARY", g + "/v1", "eval-*,gpt-*", 10)
        add("slow-prod", "openai-compatible", "prod", "env:OPENAI_KEY_CANARY", f"http://127.0.0.1:{slow}/v1", "slow-*", 10)
        add("bad-500", "openai-compatible", "prod", "env:OPENAI_KEY_CANARY", f"http://127.0.0.1:{fail500}/v1", "m-500", 1)
        add("bad-429", "openai-compatible", "prod", "env:OPENAI_KEY_CANARY", f"http://127.0.0.1:{fail429}/v1", "m-429", 1)
        add("bad-400", "openai-compatible", "prod", "env:OPENAI_KEY_CANARY", f"http://127.0.0.1:{fail400}/v1", "m-400", 1)
        add("bad-down", "openai-compatible", "prod", "env:OPENAI_KEY_CANARY", f"http://127.0.0.1:{closed}/v1", "m-down", 1)
        add("good-fallback", "openai-compatible", "prod", "env:OPENAI_KEY_CANARY", g + "/v1", "m-*", 50)
        a.token = a.mint("--env", "prod", "--model", "*", "--ttl", "30m")["token"]
        yield a
    finally:
        a.stop()
