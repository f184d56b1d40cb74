"""Deny by default (I6): every admin endpoint declares the roles it admits. This walks the whole
matrix of endpoints x roles with a key of each role. Requests are shaped to be refused after
the role check (unknown names, invalid bodies) where they would change credentials, tokens or
keys; `kek rotate`, `doctor` and `audit/checkpoint` take no body and do run for the admitted
roles (harmless on the shared server: a new KEK version, provider checks, a signature). An
admitted role gets anything but 401/403, the others 403."""
import httpx
import pytest

ROLES = ["owner", "admin", "auditor", "developer", "viewer"]
MANAGE = {"owner", "admin"}
READ_INVENTORY = {"owner", "admin", "auditor", "viewer"}
READ_AUDIT = {"owner", "admin", "auditor"}

# (method, path, json body, roles admitted)
MATRIX = [
    ("POST", "/credentials", {}, MANAGE),
    ("GET", "/credentials", None, READ_INVENTORY),
    ("GET", "/credentials/no-such", None, READ_INVENTORY),
    ("DELETE", "/credentials/no-such", None, MANAGE),
    ("POST", "/credentials/no-such/verify", {}, MANAGE),
    ("POST", "/credentials/no-such/rotate", {}, MANAGE),
    ("POST", "/credentials/no-such/suspend", None, MANAGE),
    ("POST", "/credentials/no-such/resume", None, MANAGE),
    ("POST", "/test/clock", {"advance_secs": 0}, {"owner"}),
    ("POST", "/incident/lockdown", {"suspend": ["no-such-thing"]}, MANAGE),
    ("GET", "/incident/report?since=0", None, READ_AUDIT),
    ("POST", "/admin-keys", {}, {"owner"}),
    ("GET", "/admin-keys", None, MANAGE),
    ("POST", "/admin-keys/no-such/revoke", None, {"owner"}),
    ("POST", "/tokens", {"ttl": "not-a-duration"}, MANAGE | {"developer"}),
    ("GET", "/tokens", None, READ_AUDIT),
    ("POST", "/tokens/no-such/revoke", None, MANAGE),
    ("POST", "/inventory/match", {}, READ_AUDIT),
    ("GET", "/usage/recent", None, READ_AUDIT),
    ("GET", "/usage?by=model", None, READ_AUDIT),
    ("POST", "/budgets", {}, MANAGE),
    ("GET", "/budgets", None, READ_AUDIT),
    ("DELETE", "/budgets/no-such", None, MANAGE),
    ("POST", "/rate-limits", {}, MANAGE),
    ("GET", "/rate-limits", None, READ_AUDIT),
    ("DELETE", "/rate-limits/no-such", None, MANAGE),
    ("GET", "/audit?limit=1", None, READ_AUDIT),
    ("GET", "/audit/checkpoints", None, READ_AUDIT),
    ("GET", "/audit/keys", None, READ_AUDIT),
    ("POST", "/audit/checkpoint", None, READ_AUDIT),
    ("POST", "/service-accounts", {}, MANAGE),
    ("GET", "/service-accounts", None, READ_AUDIT),
    ("POST", "/service-accounts/no-such/revoke", None, MANAGE),
    ("POST", "/trust-policies", {}, MANAGE),
    ("GET", "/trust-policies", None, READ_INVENTORY),
    ("DELETE", "/trust-policies/no-such", None, MANAGE),
    ("POST", "/kek/rotate", {"unexpected": 1}, MANAGE),
    ("POST", "/doctor", {"unexpected": 1}, MANAGE),
]


@pytest.fixture(scope="module")
def keys(airlock):
    out = {"owner": airlock.admin}
    for role in ROLES[1:]:
        grant = ["--env", "prod", "--model", "gpt-4o-mini", "--max-ttl", "10m"] if role == "developer" else []
        v = airlock.cli_json("admin-key", "create", f"matrix-{role}", "--role", role, *grant)
        assert v["role"] == role and v["key"].startswith("alk_admin_")
        out[role] = v["key"]
    return out


@pytest.mark.parametrize("method,path,body,admitted", MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_every_endpoint_admits_exactly_its_roles(airlock, keys, method, path, body, admitted):
    with httpx.Client(timeout=30) as c:
        for role in ROLES:
            r = c.request(method, airlock.url + "/admin/v1" + path, json=body,
                          headers={"authorization": f"Bearer {keys[role]}"})
            airlock.captured.append(r.content)
            if role in admitted:
                assert r.status_code not in (401, 403), (role, r.status_code, r.text)
            else:
                assert r.status_code == 403, (role, r.status_code, r.text)
                assert r.json()["error"]["code"], r.text


def test_admin_keys_are_shown_once_and_revocable(airlock, keys):
    listed = airlock.cli_json("admin-key", "list")["admin_keys"]
    assert {k["role"] for k in listed} >= set(ROLES)
    assert all("key" not in k and "hash" not in k for k in listed), "never the key or its hash"
    viewer = next(k for k in listed if k["name"] == "matrix-viewer")
    with httpx.Client(timeout=10) as c:
        h = {"authorization": f"Bearer {keys['viewer']}"}
        assert c.get(airlock.url + "/admin/v1/credentials", headers=h).status_code == 200
        assert airlock.cli("admin-key", "revoke", viewer["id"]).returncode == 0
        assert c.get(airlock.url + "/admin/v1/credentials", headers=h).status_code == 401
    # An unknown role is refused; the last owner key cannot be revoked.
    assert airlock.cli("admin-key", "create", "x", "--role", "superuser").returncode == 2
    owner_id = next(k["id"] for k in listed if k["role"] == "owner")
    r = airlock.cli("admin-key", "revoke", owner_id)
    assert r.returncode == 2 and "last active owner" in r.stderr, r.stderr


def test_developers_mint_only_within_their_grant(airlock, keys):
    with httpx.Client(timeout=10) as c:
        def mint(body):
            r = c.post(airlock.url + "/admin/v1/tokens", json=body,
                       headers={"authorization": f"Bearer {keys['developer']}"})
            airlock.captured.append(r.content)
            return r
        r = mint({})
        assert r.status_code == 201, r.text
        t = r.json()
        # The whole grant when nothing is asked; named after the developer, not a chosen subject.
        assert t["env"] == "prod" and t["models"] == ["gpt-4o-mini"] and t["subject"] == "admin:matrix-developer"
        assert t["expires_at_unix"] - __import__("time").time() <= 600 + 5
        out = airlock.openai(t["token"]).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content
        assert mint({"models": ["gpt-4o-mini"], "ttl": "5m"}).status_code == 201
        for body, word in [({"models": ["*"]}, "outside your scope"),
                           ({"models": ["gpt-*"]}, "outside your scope"),
                           ({"env": "eval"}, "outside your scope"),
                           ({"ttl": "1h"}, "maximum"),
                           ({"subject": "someone-else"}, "own name")]:
            r = mint(body)
            assert r.status_code == 403, (body, r.text)
            assert word in r.json()["error"]["message"], (body, r.text)
    # A developer key needs a grant; other roles take none.
    r = airlock.cli("admin-key", "create", "dev-without-grant", "--role", "developer")
    assert r.returncode == 2 and "grant" in r.stderr, r.stderr
    r = airlock.cli("admin-key", "create", "admin-with-grant", "--role", "admin", "--env", "prod")
    assert r.returncode == 2 and "only developer keys" in r.stderr, r.stderr
    listed = airlock.cli_json("admin-key", "list")["admin_keys"]
    dev = next(k for k in listed if k["name"] == "matrix-developer")
    assert dev["grant"] == {"env": "prod", "models": ["gpt-4o-mini"], "credentials": [], "max_ttl_secs": 600}
