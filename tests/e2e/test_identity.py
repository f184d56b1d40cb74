"""Workload identity (issue 6): OpenBao's identity engine plays the CI platform (a real OIDC
issuer: signed RS256 JWTs, discovery, JWKS). A trust policy added through the CLI admits
tokens whose claims pin the repository by id; every other token is refused with the RFC 6749
error and audited. Service accounts mint within their scope and cannot call models. `airlock
run` gets its token by exchange (a token file, GitHub Actions' token endpoint) or from a
service-account key, and the command never sees a key."""
import base64
import http.server
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from conftest import REQUIRE_ALL, rand

try:
    from stores import Bao
except BaseException as e:  # stores skips the module itself when OpenBao is missing
    if REQUIRE_ALL:
        raise
    pytest.skip(str(e), allow_module_level=True)
try:
    from cryptography.hazmat.primitives import hashes, hmac as chmac
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
except ImportError as e:
    if REQUIRE_ALL:
        raise
    pytest.skip(f"cryptography is not installed ({e}); run scripts/test.sh", allow_module_level=True)

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
CLAIMS = {"repository": "acme/app", "repository_id": "123456", "repository_owner_id": "42",
          "ref": "refs/heads/main"}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Issuer:
    """OpenBao's identity engine: one signing key, a role per kind of workload token."""

    def __init__(self, tmp):
        self.bao = Bao(tmp)
        self.issuer = f"{self.bao.addr}/v1/identity/oidc"
        self.bao.ok("POST", "/identity/oidc/key/ci", json={"algorithm": "RS256", "allowed_client_ids": "*"})
        self.bao.policy("ci-oidc", 'path "identity/oidc/token/*" { capabilities = ["read"] }')
        self.bao.ok("POST", "/sys/auth/userpass", json={"type": "userpass"})
        self.bao.ok("POST", "/auth/userpass/users/ci", json={"password": "pw", "policies": "ci-oidc"})
        login = self.bao.ok("POST", "/auth/userpass/login/ci", json={"password": "pw"})
        self.ci_token = login["auth"]["client_token"]

    def role(self, name, claims, client_id="airlock", ttl="10m"):
        self.bao.ok("POST", f"/identity/oidc/role/{name}",
                    json={"key": "ci", "ttl": ttl, "client_id": client_id, "template": json.dumps(claims)})

    def token(self, role):
        r = httpx.get(f"{self.bao.addr}/v1/identity/oidc/token/{role}",
                      headers={"x-vault-token": self.ci_token}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]["token"]


@pytest.fixture(scope="module")
def idp(airlock, tmp_path_factory):
    i = Issuer(tmp_path_factory.mktemp("oidc"))
    i.role("gha", CLAIMS)
    # Same repository name, another repository: what a fork or a re-created name looks like.
    i.role("gha-impostor", {**CLAIMS, "repository_id": "999999"})
    i.role("gha-other-aud", CLAIMS, client_id="someone-else")
    i.role("gha-short", CLAIMS, ttl="2s")
    policy = airlock.tmp / "gha-app.toml"
    policy.write_text(textwrap.dedent(f"""\
        name = "gha-app"
        issuer = "{i.issuer}"
        audience = "airlock"
        subject_claim = "repository"
        [claims]
        repository_id = "123456"
        repository_owner_id = "42"
        ref = {{ glob = "refs/heads/*" }}
        [grant]
        env = "prod"
        models = ["gpt-4o-mini", "text-embedding-*"]
        max_ttl = "10m"
        """))
    r = airlock.cli("trust", "add", "--file", str(policy))
    assert r.returncode == 0, r.stderr
    yield i
    airlock.cli("trust", "remove", "gha-app")
    i.bao.stop()


def exchange(airlock, jwt, **extra):
    form = {"grant_type": GRANT, "subject_token": jwt, "subject_token_type": JWT_TYPE, **extra}
    r = httpx.post(airlock.url + "/v1/token/exchange", data=form, timeout=20)
    airlock.captured.append(r.content)
    return r


def refused(airlock, r, error="invalid_request", word=None):
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == error and body["error_description"], body
    assert r.headers["cache-control"] == "no-store"
    if word:
        assert word in body["error_description"], body
    return body["error_description"]


def exchange_records(airlock):
    r = httpx.get(airlock.url + "/admin/v1/audit", params={"limit": 10000, "action": "token.exchange"},
                  headers={"authorization": f"Bearer {airlock.admin}"}, timeout=10)
    assert r.status_code == 200, r.text
    airlock.captured.append(r.content)
    return [x for x in r.json()["records"] if x["action"] == "token.exchange"]


def forge(claims, kid, alg="RS256", key=None, secret=None):
    header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signing = f"{header}.{body}".encode()
    if alg == "none":
        return f"{header}.{body}."
    if alg == "HS256":
        h = chmac.HMAC(secret, hashes.SHA256())
        h.update(signing)
        return f"{header}.{body}.{b64(h.finalize())}"
    sig = key.sign(signing, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{body}.{b64(sig)}"


def test_a_workload_token_is_exchanged_and_the_sdk_uses_it(airlock, idp):
    jwt = idp.token("gha")
    r = exchange(airlock, jwt)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    t = r.json()
    assert t["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert t["token_type"] == "Bearer" and 0 < t["expires_in"] <= 600
    assert t["access_token"].startswith("alk_tok_") and t["policy"] == "gha-app"
    assert t["scope"] == "env:prod model:gpt-4o-mini model:text-embedding-*"
    client = airlock.openai(t["access_token"])
    out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content
    import openai
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    # The token records who it was minted for and the claims that matched.
    row = next(x for x in airlock.cli_json("token", "list")["tokens"] if x["id"] == t["token_id"])
    assert row["subject"] == "oidc:gha-app:acme/app" and row["minted_by"] == "trust:gha-app"
    assert row["claims"]["repository_id"] == "123456" and row["claims"]["iss"] == idp.issuer
    assert row["claims"]["ref"] == "refs/heads/main"
    rec = next(x for x in exchange_records(airlock) if x.get("target") == t["token_id"])
    assert rec["outcome"] == "ok" and rec["actor"] == "trust:gha-app"
    # A narrower scope may be asked for; a wider one is refused.
    r = exchange(airlock, jwt, scope="model:gpt-4o-mini", ttl="2m")
    assert r.status_code == 200 and r.json()["scope"] == "env:prod model:gpt-4o-mini", r.text
    assert r.json()["expires_in"] <= 120
    refused(airlock, exchange(airlock, jwt, scope="model:*"), "invalid_scope", "outside")
    refused(airlock, exchange(airlock, jwt, scope="env:eval"), "invalid_scope", "outside")
    refused(airlock, exchange(airlock, jwt, ttl="1h"), "invalid_scope", "maximum")
    r = exchange(airlock, jwt, audience="no-such-policy")
    refused(airlock, r, "invalid_target")
    # One pattern per scope item: a comma list would slip unchecked patterns past the scope.
    for scope in ["model:gpt-x,*", "model:gpt-4o-mini,o3-mini"]:
        refused(airlock, exchange(airlock, jwt, scope=scope), "invalid_request", "not a valid pattern")


def test_every_untrusted_token_is_refused_and_audited(airlock, idp):
    good = idp.token("gha")
    header = json.loads(unb64(good.split(".")[0]))
    claims = json.loads(unb64(good.split(".")[1]))
    kid = header["kid"]
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    before = len(exchange_records(airlock))
    cases = [
        # claim mismatch: same repository name, another repository_id
        (idp.token("gha-impostor"), "repository_id"),
        (idp.token("gha-other-aud"), "audience"),
        # an issuer no policy trusts (signed, well-formed)
        (forge({**claims, "iss": "https://issuer.example"}, kid, key=rogue), "not trusted"),
        # unsigned
        (forge(claims, kid, alg="none"), "alg none"),
        # a key that is not in the issuer's JWKS
        (forge(claims, "not-a-published-kid", key=rogue), "not in the issuer's published keys"),
        # the issuer's kid, someone else's key
        (forge(claims, kid, key=rogue), "signature does not verify"),
        # HMAC keyed with something public: never accepted
        (forge(claims, kid, alg="HS256", secret=b"public-knowledge"), "not allowed"),
        # a tampered payload under the real signature
        (good.split(".")[0] + "." + b64(json.dumps({**claims, "repository_id": "999999"}).encode())
         + "." + good.split(".")[2], "signature does not verify"),
    ]
    for jwt, word in cases:
        refused(airlock, exchange(airlock, jwt), word=word)
    short = idp.token("gha-short")
    exp = json.loads(unb64(short.split(".")[1]))["exp"]
    time.sleep(max(0, exp + 1 + 1.5 - time.time()))  # past exp and the 1 s leeway
    refused(airlock, exchange(airlock, short), word="expired")
    # Malformed requests get the RFC's codes too.
    r = httpx.post(airlock.url + "/v1/token/exchange",
                   data={"grant_type": "client_credentials", "subject_token": good}, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    refused(airlock, exchange(airlock, good, subject_token_type="urn:x"), word="subject_token_type")
    r = httpx.post(airlock.url + "/v1/token/exchange", json={"grant_type": GRANT}, timeout=10)
    refused(airlock, r, word="form-encoded")
    records = exchange_records(airlock)[before:]
    refusals = [x for x in records if x["outcome"] == "refused"]
    assert len(refusals) >= len(cases) + 4, [x.get("reason") for x in records]
    reasons = " | ".join(x["reason"] for x in refusals)
    for word in ["repository_id", "audience", "not trusted", "alg none", "published keys",
                 "signature does not verify", "expired", "unsupported_grant_type"]:
        assert word in reasons, (word, reasons)
    # Refusals whose signature verified are attributed to the identity.
    impostor = next(x for x in refusals if "repository_id" in x["reason"])
    assert impostor["actor"] == f"oidc:{idp.issuer}" and impostor["actor_kind"] == "workload"
    # The JWTs themselves never reach the log.
    assert good.split(".")[2] not in json.dumps(records)


def test_service_accounts_mint_within_scope_and_cannot_call_models(airlock):
    v = airlock.cli_json("service-account", "create", "nightly-eval", "--env", "prod",
                         "--model", "gpt-4o-mini", "--max-ttl", "10m")
    key = v["key"]
    assert key.startswith("alk_sa_" + v["id"] + "_")
    secret = key.rsplit("_", 1)[1]
    with httpx.Client(timeout=20) as c:
        h = {"authorization": f"Bearer {key}"}
        # Not a model key, not an admin key.
        r = c.post(airlock.url + "/v1/chat/completions", headers=h,
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 401 and "service-account key cannot call models" in r.text, r.text
        assert c.get(airlock.url + "/admin/v1/credentials", headers=h).status_code == 401
        r = c.post(airlock.url + "/v1/token", headers=h, json={})
        assert r.status_code == 201, r.text
        t = r.json()
        assert t["subject"] == "sa:nightly-eval" and t["models"] == ["gpt-4o-mini"] and t["env"] == "prod"
        out = airlock.openai(t["token"]).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content
        for body, code in [({"models": ["gpt-*"]}, 403), ({"env": "eval"}, 403), ({"ttl": "1h"}, 403),
                           ({"credentials": ["openai-eval"]}, 400), ({"bogus": 1}, 400)]:
            r = c.post(airlock.url + "/v1/token", headers=h, json=body)
            airlock.captured.append(r.content)
            assert r.status_code == code, (body, r.text)
        # A token revokes itself; then it no longer works.
        r = c.post(airlock.url + "/v1/token/revoke", headers={"authorization": f"Bearer {t['token']}"})
        assert r.status_code == 200, r.text
        r = c.post(airlock.url + "/v1/chat/completions", headers={"authorization": f"Bearer {t['token']}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 401 and "revoked" in r.text
        listed = airlock.cli_json("service-account", "list")["service_accounts"]
        sa = next(x for x in listed if x["id"] == v["id"])
        assert sa["last_used_at"] and "hash" not in sa and "key" not in sa
        assert sa["scope"]["max_ttl_secs"] == 600
        # Only a keyed hash is stored.
        db = sqlite3.connect(str(airlock.state / "airlock.db"))
        dump = "\n".join(db.iterdump())
        db.close()
        assert secret not in dump
        # Revoked: the key can no longer mint.
        assert airlock.cli("service-account", "revoke", "nightly-eval").returncode == 0
        r = c.post(airlock.url + "/v1/token", headers=h, json={})
        assert r.status_code == 401 and "revoked" in r.text
    r = httpx.get(airlock.url + "/admin/v1/audit", params={"limit": 10000, "action": "token.mint"},
                  headers={"authorization": f"Bearer {airlock.admin}"}, timeout=10)
    mints = [x for x in r.json()["records"] if x.get("actor") == f"sa:{v['id']}"]
    assert {x["outcome"] for x in mints} == {"ok", "refused"}, mints
    assert any(x["target"] == t["id"] for x in mints if x["outcome"] == "ok")
    assert any("outside your scope" in (x.get("reason") or "") for x in mints)


SCRIPT = """
import os, sys
from openai import OpenAI
for k in ["AIRLOCK_ADMIN_TOKEN", "AIRLOCK_SERVICE_ACCOUNT_KEY", "ACTIONS_ID_TOKEN_REQUEST_URL",
          "ACTIONS_ID_TOKEN_REQUEST_TOKEN"]:
    assert k not in os.environ, k
key = os.environ["OPENAI_API_KEY"]
assert key.startswith("alk_tok_"), key[:8]
out = OpenAI().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
print("ANSWER", out.choices[0].message.content[:20])
sys.exit(7)
"""


def run_script(airlock, env, *flags):
    script = airlock.tmp / "identity_script.py"
    script.write_text(SCRIPT)
    r = airlock.cli("run", *flags, "--", sys.executable, str(script), admin=False, env=env)
    return r


def revoked_after(airlock, subject_prefix):
    rows = [x for x in airlock.cli_json("token", "list", "--all")["tokens"]
            if x["subject"].startswith(subject_prefix)]
    assert rows, subject_prefix
    newest = max(rows, key=lambda x: x["created_at"])
    return newest["revoked_at"] is not None


class TokenEndpoint(http.server.BaseHTTPRequestHandler):
    """GitHub Actions' ID token endpoint: needs the request bearer and an audience."""
    jwt = None
    bearer = None
    seen = []

    def do_GET(self):
        ok = self.headers.get("authorization") == f"Bearer {self.bearer}"
        TokenEndpoint.seen.append(self.path)
        body = json.dumps({"value": self.jwt} if ok else {"message": "bad credentials"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_run_gets_its_token_by_exchange_or_service_account(airlock, idp):
    env_clean = {"AIRLOCK_ADMIN_TOKEN": "", "AIRLOCK_SERVICE_ACCOUNT_KEY": "",
                 "ACTIONS_ID_TOKEN_REQUEST_URL": "", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ""}
    # 1. A token file (a Kubernetes projected token works the same way).
    tf = airlock.tmp / "oidc-token"
    tf.write_text(idp.token("gha") + "\n")
    r = run_script(airlock, env_clean, "--oidc-token-file", str(tf), "--model", "gpt-4o-mini")
    assert r.returncode == 7 and "ANSWER" in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert revoked_after(airlock, "oidc:gha-app:")
    # 2. GitHub Actions: the runner's endpoint, asked for audience=airlock.
    TokenEndpoint.jwt = idp.token("gha")
    TokenEndpoint.bearer = rand(24)
    srv = http.server.HTTPServer(("127.0.0.1", 0), TokenEndpoint)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/token?api-version=2.0"
        env = {**env_clean, "ACTIONS_ID_TOKEN_REQUEST_URL": url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": TokenEndpoint.bearer}
        r = run_script(airlock, env)
        assert r.returncode == 7 and "ANSWER" in r.stdout, (r.returncode, r.stdout, r.stderr)
        assert any("audience=airlock" in p for p in TokenEndpoint.seen), TokenEndpoint.seen
        # A workload whose identity no policy admits gets nothing and runs nothing.
        TokenEndpoint.jwt = idp.token("gha-impostor")
        r = run_script(airlock, env)
        assert r.returncode == 2 and "no trust policy admits" in r.stderr and "ANSWER" not in r.stdout, r.stderr
    finally:
        srv.shutdown()
    # 3. A service-account key.
    v = airlock.cli_json("service-account", "create", "runner", "--env", "prod", "--model", "gpt-4o-mini")
    r = run_script(airlock, {**env_clean, "AIRLOCK_SERVICE_ACCOUNT_KEY": v["key"]})
    assert r.returncode == 7 and "ANSWER" in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert revoked_after(airlock, "sa:runner")
    # Nothing to get a token with: a clear usage error.
    r = run_script(airlock, env_clean)
    assert r.returncode == 2 and "no identity" in r.stderr, r.stderr


def test_trust_policies_through_the_api(airlock, idp):
    listed = airlock.cli_json("trust", "list")["trust_policies"]
    p = next(x for x in listed if x["name"] == "gha-app")
    assert p["source"] == "api" and p["claims"]["ref"] == {"glob": "refs/heads/*"}
    bad = airlock.tmp / "bad-policy.json"
    # A GitHub policy that pins only the repository name is refused, with the reason.
    bad.write_text(json.dumps({"name": "by-name", "issuer": "https://token.actions.githubusercontent.com",
                               "audience": "airlock", "claims": {"repository": "acme/app"},
                               "grant": {"env": "prod", "models": ["*"]}}))
    r = airlock.cli("trust", "add", "--file", str(bad))
    assert r.returncode == 2 and "repository_id" in r.stderr, r.stderr
    bad.write_text(json.dumps({"name": "hmac", "issuer": idp.issuer, "audience": "airlock",
                               "algorithms": ["HS256"], "claims": {"sub": "x"},
                               "grant": {"env": "prod", "models": ["*"]}}))
    r = airlock.cli("trust", "add", "--file", str(bad))
    assert r.returncode == 2 and "shared-secret" in r.stderr, r.stderr
    r = airlock.cli("trust", "add", "--file", str(airlock.tmp / "gha-app.toml"))
    assert r.returncode == 2 and "already exists" in r.stderr, r.stderr
    assert airlock.cli("trust", "remove", "no-such").returncode == 2


class KeyServer(http.server.BaseHTTPRequestHandler):
    """Serves a rogue JWK set at /jwks and a failing one at /broken (counting its hits)."""
    jwks = None
    broken_hits = 0

    def do_GET(self):
        if self.path == "/jwks":
            body, status = json.dumps(self.jwks).encode(), 200
        else:
            KeyServer.broken_hits += 1
            body, status = b"{}", 500
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_a_policy_is_checked_only_against_its_own_keys(airlock, idp):
    """An admin's policy for the same issuer with its own jwks_url must not lend its keys to
    another policy; a failing key source is not fetched more than once per refetch gap."""
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    nums = rogue.public_key().public_numbers()
    KeyServer.jwks = {"keys": [{"kty": "RSA", "kid": "rogue", "alg": "RS256", "use": "sig",
                                "n": b64(nums.n.to_bytes(256, "big")), "e": b64(nums.e.to_bytes(3, "big"))}]}
    srv = http.server.HTTPServer(("127.0.0.1", 0), KeyServer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    files = []
    try:
        for name, issuer, path, claims in [("own-keys", idp.issuer, "/jwks", {"sub": "nobody-real"}),
                                           ("broken-keys", base + "/issuer", "/broken", {"sub": "x"})]:
            f = airlock.tmp / f"{name}.json"
            f.write_text(json.dumps({"name": name, "issuer": issuer, "audience": "other-aud",
                                     "jwks_url": base + path, "claims": claims,
                                     "grant": {"env": "prod", "models": ["gpt-4o-mini"], "max_ttl": "5m"}}))
            r = airlock.cli("trust", "add", "--file", str(f))
            assert r.returncode == 0, r.stderr
            files.append(name)
        now = int(time.time())
        own = {"iss": idp.issuer, "aud": "other-aud", "sub": "nobody-real", "iat": now, "exp": now + 300}
        r = exchange(airlock, forge(own, "rogue", key=rogue), audience="own-keys")
        assert r.status_code == 200 and r.json()["policy"] == "own-keys", r.text
        # The same keys, with gha-app's claims: gha-app trusts only the issuer's own keys.
        legit = json.loads(unb64(idp.token("gha").split(".")[1]))
        refused(airlock, exchange(airlock, forge(legit, "rogue", key=rogue)), "invalid_request", "no trust policy admits")
        # A failing key source: 15 forged tokens, at most one fetch per refetch gap (10 s).
        bad = {"iss": base + "/issuer", "aud": "other-aud", "sub": "x", "iat": now, "exp": now + 300}
        for i in range(15):
            r = exchange(airlock, forge(bad, f"kid-{i}", key=rogue))
            assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable", r.text
            assert base not in r.text, "internal addresses stay in the audit log"
        assert KeyServer.broken_hits <= 2, KeyServer.broken_hits
    finally:
        for name in files:
            airlock.cli("trust", "remove", name)
        srv.shutdown()


def test_revoking_a_service_account_or_policy_revokes_what_it_minted(airlock, idp):
    v = airlock.cli_json("service-account", "create", "short-lived", "--env", "prod", "--model", "gpt-4o-mini")
    h = {"authorization": f"Bearer {v['key']}"}
    t = httpx.post(airlock.url + "/v1/token", headers=h, json={}, timeout=10).json()
    assert t["expires_at_unix"] - time.time() <= 3600 + 5, "bounded minters default to at most 1h"
    ok = airlock.openai(t["token"]).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content
    out = airlock.cli_json("service-account", "revoke", v["id"])
    assert out["tokens_revoked"] == 1, out
    import openai
    with pytest.raises(openai.AuthenticationError):
        airlock.openai(t["token"]).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # A policy's removal ends the tokens it granted (re-added afterwards for other tests).
    f = airlock.tmp / "temp-policy.json"
    f.write_text(json.dumps({"name": "temp-policy", "issuer": idp.issuer, "audience": "airlock",
                             "claims": {"repository_id": "123456"},
                             "grant": {"env": "prod", "models": ["gpt-4o-mini"], "max_ttl": "5m"}}))
    assert airlock.cli("trust", "add", "--file", str(f)).returncode == 0
    r = exchange(airlock, idp.token("gha"), audience="temp-policy")
    assert r.status_code == 200, r.text
    out = airlock.cli_json("trust", "remove", "temp-policy")
    assert out["tokens_revoked"] >= 1, out
    with pytest.raises(openai.AuthenticationError):
        airlock.openai(r.json()["access_token"]).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
