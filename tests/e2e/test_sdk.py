"""The official SDKs, unmodified, against airlock in front of the mock provider."""
import json
import time

import anthropic
import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "say hello to the gateway"}]


def mock_stats(a, name):
    return httpx.get(f"http://127.0.0.1:{a.mocks[name]}/mock/stats").json()


def usage_rows(a, limit=50):
    r = httpx.get(a.url + f"/admin/v1/usage/recent?limit={limit}", headers={"authorization": f"Bearer {a.admin}"})
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def wait_usage(a, request_id, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for row in usage_rows(a, 200):
            if row["request_id"] == request_id:
                return row
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


def test_openai_chat_plain(airlock):
    c = airlock.openai(airlock.token)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    r = raw.parse()
    assert r.choices[0].message.content == "Hello from the airlock mock provider good."
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 7
    stats = mock_stats(airlock, "good")["last"]
    assert stats["key"] == "ok", "the provider key was injected"
    assert stats["airlock_token_seen"] is False, "the client's token never reaches the provider"
    assert "x-api-key" not in stats["headers"] and "cookie" not in stats["headers"]
    row = wait_usage(airlock, raw.headers["x-airlock-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["credential"], row["outcome"]) == (5, 7, "openai-prod", "ok")


def test_openai_chat_stream_with_usage(airlock):
    c = airlock.openai(airlock.token)
    with c.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}
    ) as resp:
        rid = resp.headers["x-airlock-request-id"]
        chunks = list(resp.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "Hello from the airlock mock provider good."
    assert chunks[-1].usage.completion_tokens == 7
    row = wait_usage(airlock, rid)
    assert (row["input_tokens"], row["output_tokens"], row["stream"], row["outcome"]) == (5, 7, True, "ok")


def test_openai_completions_embeddings_responses(airlock):
    c = airlock.openai(airlock.token)
    assert c.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two").choices[0].text.startswith("Hello")
    e = c.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])  # SDK asks for base64
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8
    assert e.data[0].embedding[1] == pytest.approx(0.1)
    r = c.responses.create(model="gpt-4o", input="hello there")
    assert r.output_text == "Hello from the airlock mock provider good."
    assert r.usage.output_tokens == 7


def test_models_list_only_what_the_token_may_use(airlock):
    narrow = airlock.mint("--env", "prod", "--model", "gpt-4o*", "--ttl", "5m")["token"]
    ids = [m.id for m in airlock.openai(narrow).models.list()]
    assert "gpt-4o-mini" in ids and "gpt-4o" in ids
    assert "claude-mock-1" not in ids and "text-embedding-3-small" not in ids
    everything = [m.id for m in airlock.openai(airlock.token).models.list()]
    assert "claude-mock-1" in everything and "text-embedding-3-small" in everything
    anth = [m.id for m in airlock.anthropic(narrow).models.list()]
    assert anth == sorted(ids)


def test_anthropic_messages_plain_stream_count(airlock):
    c = airlock.anthropic(airlock.token)
    m = c.messages.create(model="claude-mock-1", max_tokens=50, messages=MSG)
    assert m.content[0].text == "Hello from the airlock mock provider good."
    assert m.usage.input_tokens == 5 and m.usage.output_tokens == 7
    with c.messages.stream(model="claude-mock-1", max_tokens=50, messages=MSG) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from the airlock mock provider good."
    assert final.usage.output_tokens == 7
    assert c.messages.count_tokens(model="claude-mock-1", messages=MSG).input_tokens == 5
    stats = mock_stats(airlock, "good")["last"]
    assert stats["key"] == "ok" and stats["airlock_token_seen"] is False
    assert stats["anthropic_version"], "the SDK's anthropic-version is forwarded"


def test_refusals_openai(airlock):
    c = airlock.openai("alk_tok_" + "A" * 60)
    with pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "invalid token" in str(e.value)
    with pytest.raises(openai.AuthenticationError) as e:
        airlock.openai("sk-not-an-airlock-token").chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "alk_tok_" in str(e.value), "the message says what an airlock token looks like"

    # forged: flip characters inside the signature
    t = airlock.token
    forged = t[:-12] + ("B" if t[-12] != "B" else "C") + t[-11:]
    with pytest.raises(openai.AuthenticationError):
        airlock.openai(forged).chat.completions.create(model="gpt-4o-mini", messages=MSG)

    # expired
    short = airlock.mint("--env", "prod", "--model", "*", "--ttl", "1s")["token"]
    time.sleep(2.2)
    with pytest.raises(openai.AuthenticationError) as e:
        airlock.openai(short).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "expired" in str(e.value)

    # revoked: works, then refused at once
    m = airlock.mint("--env", "prod", "--model", "*", "--ttl", "10m")
    rc = airlock.openai(m["token"])
    rc.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert airlock.cli("token", "revoke", m["id"]).returncode == 0
    with pytest.raises(openai.AuthenticationError) as e:
        rc.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "revoked" in str(e.value)
    # The refused use of a revoked token is audited under its id: who kept trying matters.
    r = airlock.cli("audit", "tail", "--json", "--actor", m["id"], "-n", "100")
    recs = [json.loads(l) for l in r.stdout.splitlines()]
    assert any(x["action"] == "request.refused" and "revoked" in (x["reason"] or "") for x in recs), recs

    # revoked by another process writing the shared database: refused within about a second
    import sqlite3
    m2 = airlock.mint("--env", "prod", "--model", "*", "--ttl", "10m")
    rc2 = airlock.openai(m2["token"])
    rc2.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    db = sqlite3.connect(airlock.state / "airlock.db", timeout=10)
    with db:
        assert db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?",
                          (int(time.time() * 1000), m2["id"])).rowcount == 1
    db.close()
    time.sleep(2.5)
    with pytest.raises(openai.AuthenticationError) as e:
        rc2.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "revoked" in str(e.value)

    # over-scoped: model not allowed
    mini = airlock.mint("--env", "prod", "--model", "gpt-4o-mini", "--ttl", "5m")["token"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        airlock.openai(mini).chat.completions.create(model="gpt-4o", messages=MSG)
    assert "does not allow model `gpt-4o`" in str(e.value)

    # wrong environment: a prod token, a model only eval serves (I4)
    with pytest.raises(openai.PermissionDeniedError) as e:
        airlock.openai(airlock.token).chat.completions.create(model="eval-special", messages=MSG)
    assert "environment" in str(e.value)
    # and an eval token is never served by the prod credentials of the same model
    ev = airlock.mint("--env", "eval", "--model", "gpt-*", "--ttl", "5m")["token"]
    raw = airlock.openai(ev).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert wait_usage(airlock, raw.headers["x-airlock-request-id"])["credential"] == "openai-eval"

    # unknown model
    with pytest.raises(openai.NotFoundError):
        airlock.openai(airlock.token).chat.completions.create(model="nobody-serves-this", messages=MSG)


def test_refusals_anthropic(airlock):
    with pytest.raises(anthropic.AuthenticationError):
        airlock.anthropic("alk_tok_" + "A" * 60).messages.create(model="claude-mock-1", max_tokens=5, messages=MSG)
    gpt_only = airlock.mint("--env", "prod", "--model", "gpt-*", "--ttl", "5m")["token"]
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        airlock.anthropic(gpt_only).messages.create(model="claude-mock-1", max_tokens=5, messages=MSG)
    assert "claude-mock-1" in str(e.value)
    with pytest.raises(anthropic.NotFoundError):
        airlock.anthropic(airlock.token).messages.create(model="nobody-serves-this-one", max_tokens=5, messages=MSG)


def test_streaming_really_streams(airlock):
    c = airlock.openai(airlock.token)
    start = time.monotonic()
    stream = c.chat.completions.create(model="slow-model", messages=MSG, stream=True)
    first = None
    n = 0
    for ch in stream:
        if ch.choices and ch.choices[0].delta.content:
            n += 1
            if first is None:
                first = time.monotonic() - start
    total = time.monotonic() - start
    # 7 words + a final chunk + [DONE], 300 ms apart: the last arrives ~2.4 s after the first
    assert n == 7
    assert total >= 2.0
    assert first < total - 1.5, f"first chunk after {first:.2f}s of {total:.2f}s: the stream was buffered"


def test_client_disconnect_is_recorded(airlock):
    with httpx.Client(timeout=10) as h:
        with h.stream("POST", airlock.url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {airlock.token}"},
                      json={"model": "slow-model", "messages": MSG, "stream": True}) as r:
            rid = r.headers["x-airlock-request-id"]
            next(r.iter_bytes())
    row = wait_usage(airlock, rid)
    assert row["outcome"] == "client_disconnected"


@pytest.mark.parametrize("model,bad", [("m-500", "fail500"), ("m-429", "fail429"), ("m-down", None)])
def test_fallback_to_next_credential(airlock, model, bad):
    before = mock_stats(airlock, bad)["requests"] if bad else 0
    raw = airlock.openai(airlock.token).chat.completions.with_raw_response.create(model=model, messages=MSG)
    assert raw.parse().choices[0].message.content.endswith("good.")
    if bad:
        assert mock_stats(airlock, bad)["requests"] == before + 1, "the first credential was tried"
    rid = raw.headers["x-airlock-request-id"]
    row = wait_usage(airlock, rid)
    assert row["credential"] == "good-fallback" and row["attempts"] == 2
    # The audit record names the credential whose key was tried first, and why it was left.
    r = airlock.cli("audit", "tail", "--json", "--action", "inference", "-n", "200")
    (rec,) = [x for x in map(json.loads, r.stdout.splitlines()) if x["request_id"] == rid]
    first = {"m-500": "bad-500 (HTTP 500)", "m-429": "bad-429 (HTTP 429)", "m-down": "bad-down (unreachable)"}[model]
    assert rec["credential"] == "good-fallback" and f"fell back from {first}" in rec["reason"], rec


def test_400_is_not_retried(airlock):
    good_before = mock_stats(airlock, "good")["requests"]
    with pytest.raises(openai.BadRequestError) as e:
        airlock.openai(airlock.token).chat.completions.create(model="m-400", messages=MSG)
    assert "answers 400" in str(e.value)
    assert mock_stats(airlock, "good")["requests"] == good_before


def test_attenuation_offline(airlock):
    wide = airlock.mint("--env", "prod", "--model", "gpt-*", "--ttl", "10m")["token"]
    r = airlock.cli("token", "attenuate", wide, "--model", "gpt-4o-mini", "--ttl", "5m", "--json", admin=False,
                    env={"AIRLOCK_URL": "http://127.0.0.1:1"})
    assert r.returncode == 0, r.stderr
    narrow = json.loads(r.stdout)["token"]
    c = airlock.openai(narrow)
    c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="gpt-4o", messages=MSG)
    # trying to widen again: a new block cannot lift the earlier one's limits
    r = airlock.cli("token", "attenuate", narrow, "--model", "*", "--ttl", "20h", "--json", admin=False)
    wider = json.loads(r.stdout)["token"]
    with pytest.raises(openai.PermissionDeniedError):
        airlock.openai(wider).chat.completions.create(model="gpt-4o", messages=MSG)
    # a narrowed token is outside its scope for anthropic models too
    with pytest.raises(anthropic.PermissionDeniedError):
        airlock.anthropic(narrow).messages.create(model="claude-mock-1", max_tokens=5, messages=MSG)
    # a 1-second narrowing expires even though the parent lives on
    short = json.loads(airlock.cli("token", "attenuate", wide, "--ttl", "1s", "--json", admin=False).stdout)["token"]
    time.sleep(2.2)
    with pytest.raises(openai.AuthenticationError):
        airlock.openai(short).chat.completions.create(model="gpt-4o-mini", messages=MSG)
