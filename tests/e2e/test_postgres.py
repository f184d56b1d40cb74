"""airlock on PostgreSQL (issue 17, first step): `init --store postgres://…` creates the schema
and the owner key there, and `serve` answers the official SDKs with every record in PostgreSQL:
usage and the audit log, which verifies, refuses edits, and holds no key (I1). Each run uses a
database of its own on 127.0.0.1:5432, dropped afterwards."""
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import REQUIRE_ALL, rand
from test_audit import Instance

MSG = [{"role": "user", "content": "hello"}]
PG = os.environ.get("AIRLOCK_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


def psql(db_url, sql):
    return subprocess.run(["psql", db_url, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def database():
    missing = [t for t in ("psql", "pg_dump") if shutil.which(t) is None]
    if missing or psql(PG, "SELECT 1").returncode != 0:
        msg = f"PostgreSQL at {PG} with {' and '.join(missing) or 'psql'} is needed"
        if REQUIRE_ALL:
            pytest.fail(msg)
        pytest.skip(msg)
    name = f"airlock_e2e_{rand(10).lower()}"
    assert psql(PG, f"CREATE DATABASE {name}").returncode == 0
    yield PG.rsplit("/", 1)[0] + "/" + name
    psql(PG, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_serve_on_postgresql_with_the_official_sdks(airlock, database):
    inst = Instance(airlock, "pg", init_args=["--store", database])
    try:
        cfg = open(inst.config).read()
        assert f'url = "{database}"' in cfg, cfg
        assert not (inst.dir / "airlock.db").exists(), "nothing written to SQLite"

        import openai
        oai = openai.OpenAI(base_url=inst.url + "/v1", api_key=inst.token, max_retries=0,
                            http_client=airlock.http())
        r = oai.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert r.choices[0].message.content
        chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
        assert chunks
        # A model no credential serves: refused, and recorded as such.
        with pytest.raises(openai.APIStatusError):
            oai.chat.completions.create(model="claude-3-5-haiku-latest", messages=MSG)

        # Every use is in PostgreSQL: the usage rows and the audit records.
        deadline = time.time() + 10
        while time.time() < deadline:
            n = psql(database, "SELECT COUNT(*) FROM usage WHERE outcome = 'ok'").stdout.strip()
            if n == "2":
                break
            time.sleep(0.2)
        assert n == "2", n
        inference = psql(database, "SELECT COUNT(*) FROM audit WHERE action LIKE 'inference%'")
        assert int(inference.stdout) >= 2, inference
        v = inst.cli("audit", "verify", "--json")
        assert v.returncode == 0, v.stdout + v.stderr
        out = json.loads(v.stdout)
        assert out["ok"] and out["summary"]["records"] >= 4, out

        # The log is append-only in the database itself.
        edit = psql(database, "UPDATE audit SET actor = 'someone else' WHERE seq = 2")
        assert edit.returncode != 0 and "append-only" in edit.stderr, edit
        assert psql(database, "DELETE FROM audit").returncode != 0

        # The listing reads PostgreSQL too, and the canary key is nowhere in the database.
        listed = json.loads(inst.cli("credential", "list", "--json").stdout)["credentials"]
        assert {c["name"] for c in listed} == {"prod", "slow"}
        assert next(c for c in listed if c["name"] == "prod")["last_used_at"] is not None
        dump = subprocess.run(["pg_dump", database], capture_output=True, timeout=120)
        assert dump.returncode == 0, dump.stderr
        assert b"CREATE TABLE" in dump.stdout
        assert airlock.canary.encode() not in dump.stdout
        airlock.captured.append(dump.stdout)
    finally:
        inst.stop()
    # A restart finds the log as it left it and goes on.
    inst.start()
    try:
        assert inst.chat().status_code == 200
        v = inst.cli("audit", "verify", "--json")
        assert v.returncode == 0, v.stdout + v.stderr
        # Someone with write access appends a record: the writer does not sign over it; it
        # stops, so requests are refused (fail-closed), and verify reports the tail.
        forged = psql(database, "INSERT INTO audit (seq, ts, actor_kind, action, outcome, prev, hash) "
                                "SELECT MAX(seq) + 1, 0, 'token', 'inference', 'ok', 'x', 'y' FROM audit")
        assert forged.returncode == 0, forged
        assert inst.chat().status_code == 503
        v = inst.cli("audit", "verify", "--json")
        assert v.returncode == 1, v.stdout + v.stderr
    finally:
        inst.stop()
