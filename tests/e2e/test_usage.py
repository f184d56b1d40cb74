"""Usage and cost (issue 8): a known sequence of requests, plain and streaming, through the
official SDKs yields exact integer nano-dollar totals per dimension in `airlock usage --json`,
computed here from the usage each response reported and the shipped price table."""
import json

import pytest
import time

from conftest import rand

# Nano-dollars per token (dollars per million x 1000), as in crates/airlock-gateway/src/prices.toml.
RATES = {"gpt-4o-mini": (150, 600), "claude-haiku-4-5": (1000, 5000), "text-embedding-3-small": (20, 0)}
MSG = [{"role": "user", "content": "count the cost of this"}]


def usage(airlock, *args):
    r = airlock.cli("usage", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def post_concurrently(airlock, token, body, n, workers=12):
    """n chat completions with `token`, `workers` at a time; the responses, in order."""
    import concurrent.futures
    import httpx

    def one(_):
        r = httpx.post(airlock.url + "/v1/chat/completions", json=body, timeout=30,
                       headers={"authorization": f"Bearer {token}"})
        airlock.captured.append(r.content)
        return r

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(one, range(n)))


def test_costs_add_up_exactly_per_dimension(airlock):
    since = str(int(time.time() * 1000) - 1000)
    subject = f"usage-{rand(8)}"
    t1 = airlock.mint("--env", "prod", "--model", "*", "--subject", subject)
    t2 = airlock.mint("--env", "prod", "--model", "*", "--subject", subject)
    expected = {t1["id"]: 0, t2["id"]: 0}
    per_model = {}
    tokens = {t1["id"]: [0, 0], t2["id"]: [0, 0]}

    def add(tid, model, inp, out):
        cost = inp * RATES[model][0] + out * RATES[model][1]
        expected[tid] += cost
        per_model[model] = per_model.get(model, 0) + cost
        tokens[tid][0] += inp
        tokens[tid][1] += out

    oa = airlock.openai(t1["token"])
    r = oa.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    add(t1["id"], "gpt-4o-mini", r.usage.prompt_tokens, r.usage.completion_tokens)
    chunks = list(oa.chat.completions.create(model="gpt-4o-mini", messages=MSG * 3, stream=True,
                                             stream_options={"include_usage": True}))
    u = next(c.usage for c in chunks if c.usage)
    add(t1["id"], "gpt-4o-mini", u.prompt_tokens, u.completion_tokens)
    e = oa.embeddings.create(model="text-embedding-3-small", input=["one", "two three"])
    add(t1["id"], "text-embedding-3-small", e.usage.prompt_tokens, 0)

    an = airlock.anthropic(t2["token"])
    m = an.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MSG)
    add(t2["id"], "claude-haiku-4-5", m.usage.input_tokens, m.usage.output_tokens)
    with an.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=MSG * 2) as s:
        final = s.get_final_message()
    add(t2["id"], "claude-haiku-4-5", final.usage.input_tokens, final.usage.output_tokens)
    assert all(v > 0 for v in expected.values())

    by_token = {r["token"]: r for r in usage(airlock, "--by", "token", "--since", since)["rows"]}
    for tid, cost in expected.items():
        row = by_token[tid]
        assert row["cost_nanos"] == cost, (tid, row, cost)
        assert [row["input_tokens"], row["output_tokens"]] == tokens[tid], row
        assert row["unpriced_requests"] == 0
    assert by_token[t1["id"]]["requests"] == 3 and by_token[t2["id"]]["requests"] == 2
    total = sum(expected.values())
    ident = next(r for r in usage(airlock, "--by", "identity", "--since", since)["rows"] if r["identity"] == subject)
    assert ident["cost_nanos"] == total and ident["requests"] == 5, ident
    assert ident["cost_usd"] == f"{total // 10**9}.{total % 10**9:09d}"
    models = {r["model"]: r for r in usage(airlock, "--by", "model", "--since", since)["rows"]}
    for model, cost in per_model.items():
        assert models[model]["cost_nanos"] >= cost, (model, models[model], cost)
    # Buckets: every row carries its (UTC) hour; together they hold the same total.
    hourly = usage(airlock, "--by", "identity", "--since", since, "--bucket", "hour")["rows"]
    mine = [r for r in hourly if r["identity"] == subject]
    assert mine and all(r["bucket"].endswith(":00:00Z") for r in mine), mine
    assert sum(r["cost_nanos"] for r in mine) == total
    # A window that ends before the requests holds none of them.
    early = usage(airlock, "--by", "identity", "--since", "30d", "--until", str(int(since) - 60_000))["rows"]
    assert not [r for r in early if r["identity"] == subject]
    # Bad arguments are usage errors.
    assert airlock.cli("usage", "--by", "nothing").returncode == 2
    assert airlock.cli("usage", "--bucket", "week").returncode == 2
    # The text form ends with the total in dollars.
    text = airlock.cli("usage", "--by", "identity", "--since", since)
    assert text.returncode == 0 and "TOTAL" in text.stdout, text.stderr


def test_a_budget_holds_under_concurrency(airlock):
    limit = 100_000  # nano-dollars: 0.0001 USD
    t = airlock.mint("--env", "prod", "--model", "gpt-4o-mini,claude-haiku-4-5", "--budget-usd", "0.0001",
                     "--subject", f"budget-{rand(6)}")
    assert t["budget_usd"] == "0.000100000"
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "a few words"}]}
    # Reserved per request: ceil(len(body)/3) input tokens x 150 + 50 x 600 nanos: two fit, three do not.
    results = post_concurrently(airlock, t["token"], body, 36)
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(ok) + len(refused) == len(results), [r.status_code for r in results]
    assert ok and refused, (len(ok), len(refused))
    for r in refused:
        err = r.json()["error"]
        assert err["code"] == "insufficient_quota" and err["type"] == "insufficient_quota", err
        assert "budget" in err["message"] and r.headers["x-should-retry"] == "false"
    spent = next(r for r in usage(airlock, "--by", "token", "--since", "1h")["rows"] if r["token"] == t["id"])
    # Requests here set max_tokens and send text, so the documented bound is zero overspend.
    # Refusals are requests too (their usage rows carry no tokens).
    assert spent["requests"] == len(results) and 0 < spent["cost_nanos"] <= limit, spent
    # Requests one at a time until refused: then what is left is less than one reservation
    # (under 40_000 nanos for this body), so the budget was used, not refused early.
    for _ in range(10):
        if post_concurrently(airlock, t["token"], body, 1)[0].status_code == 429:
            break
    final = next(r for r in usage(airlock, "--by", "token", "--since", "1h")["rows"] if r["token"] == t["id"])
    assert limit - 40_000 < final["cost_nanos"] <= limit, final
    spent = final
    listed = next(b for b in airlock.cli_json("budget", "list")["budgets"] if b["key"] == t["id"])
    assert listed["spent_nanos"] == spent["cost_nanos"] and listed["reserved_nanos"] == 0, listed
    # The Anthropic dialect refuses in its own shape.
    import anthropic
    with pytest.raises(anthropic.RateLimitError) as e:
        for _ in range(5):
            airlock.anthropic(t["token"]).messages.create(model="claude-haiku-4-5", max_tokens=4000, messages=MSG)
    assert "budget" in str(e.value)


def test_identity_budgets_and_unpriced_models(airlock):
    subject = f"team-{rand(6)}"
    t = airlock.mint("--env", "prod", "--model", "*", "--subject", subject)
    r = airlock.cli("budget", "set", "--identity", subject, "--usd", "0.00005", "--period", "day")
    assert r.returncode == 0, r.stderr
    import openai
    c = airlock.openai(t["token"])
    # 50 input-ish tokens + 4096 default output tokens x 600 nanos is far over 50_000 nanos.
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "daily budget of identity" in str(e.value)
    out = c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=20)
    assert out.choices[0].message.content
    # A model without a price cannot be held to a budget: refused, with what to do.
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="m-unpriced", messages=MSG, max_tokens=5)
    assert "no price" in str(e.value)
    bid = next(b["id"] for b in airlock.cli_json("budget", "list")["budgets"] if b["key"] == subject)
    assert airlock.cli("budget", "remove", bid).returncode == 0
    out = c.chat.completions.create(model="m-unpriced", messages=MSG, max_tokens=5)
    assert out.choices[0].message.content


def test_projects_are_a_dimension_for_usage_budgets_and_rate_limits(airlock):
    import openai
    since = str(int(time.time() * 1000) - 1000)
    alpha, beta = f"alpha-{rand(6)}", f"beta-{rand(6)}"
    a1 = airlock.mint("--env", "prod", "--model", "*", "--project", alpha)
    a2 = airlock.mint("--env", "prod", "--model", "*", "--project", alpha, "--subject", f"other-{rand(4)}")
    b1 = airlock.mint("--env", "prod", "--model", "*", "--project", beta)
    assert a1["project"] == alpha
    spent = {alpha: [0, 0], beta: [0, 0]}
    for tok, proj in [(a1, alpha), (a2, alpha), (a2, alpha), (b1, beta)]:
        r = airlock.openai(tok["token"]).chat.completions.create(model="gpt-4o-mini", messages=MSG)
        spent[proj][0] += 1
        spent[proj][1] += r.usage.prompt_tokens * 150 + r.usage.completion_tokens * 600
    rows = {r["project"]: r for r in usage(airlock, "--by", "project", "--since", since)["rows"]}
    for proj, (n, cost) in spent.items():
        assert rows[proj]["requests"] == n and rows[proj]["cost_nanos"] == cost, rows[proj]
    # A budget on the project holds every token of it, whoever it was minted for.
    assert airlock.cli("budget", "set", "--project", alpha, "--usd", "0.00005", "--period", "day").returncode == 0
    with pytest.raises(openai.RateLimitError) as e:
        airlock.openai(a2["token"]).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert f"budget of project `{alpha}`" in str(e.value)
    assert airlock.openai(b1["token"]).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    # A rate limit on the project: one request a minute between its tokens.
    r = airlock.cli("rate-limit", "set", "--project", beta, "--rpm", "1")
    assert r.returncode == 0, r.stderr
    b2 = airlock.mint("--env", "prod", "--model", "*", "--project", beta)
    assert airlock.openai(b1["token"]).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    with pytest.raises(openai.RateLimitError) as e:
        airlock.openai(b2["token"]).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "project" in str(e.value)
    # Service accounts stamp their project on every token they mint; asking for another is refused.
    sa = airlock.cli_json("service-account", "create", f"proj-{rand(4)}", "--env", "prod", "--project", alpha)
    import httpx
    h = {"authorization": f"Bearer {sa['key']}"}
    ok = httpx.post(airlock.url + "/v1/token", json={}, headers=h)
    assert ok.status_code in (200, 201) and ok.json()["project"] == alpha, ok.text
    no = httpx.post(airlock.url + "/v1/token", json={"project": beta}, headers=h)
    assert no.status_code == 403 and "outside your scope" in no.text, no.text
    # One without a project cannot put its tokens into somebody else's.
    plain = airlock.cli_json("service-account", "create", f"noproj-{rand(4)}", "--env", "prod")
    other = httpx.post(airlock.url + "/v1/token", json={"project": alpha},
                       headers={"authorization": f"Bearer {plain['key']}"})
    assert other.status_code == 403 and "names no project" in other.text, other.text
    airlock.captured.extend([ok.content, no.content, other.content])
    assert airlock.cli("token", "mint", "--project", "bad project").returncode == 2
    assert airlock.cli("budget", "set", "--project", "x", "--token", "y", "--usd", "1").returncode == 2


def test_rate_limits_hold_under_concurrency_with_headers(airlock):
    t = airlock.mint("--env", "prod", "--model", "gpt-4o-mini")
    r = airlock.cli("rate-limit", "set", "--token", t["id"], "--rpm", "5")
    assert r.returncode == 0, r.stderr
    body = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    results = post_concurrently(airlock, t["token"], body, 12)
    ok = [r for r in results if r.status_code == 200]
    limited = [r for r in results if r.status_code == 429]
    # GCRA at 5 per minute: a burst of exactly one minute's allowance, then refusals.
    assert len(ok) == 5 and len(limited) == 7, [r.status_code for r in results]
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == [0, 1, 2, 3, 4]
    assert all(r.headers["x-ratelimit-limit-requests"] == "5" for r in ok)
    for r in limited:
        assert r.json()["error"]["code"] == "rate_limit_exceeded", r.text
        assert 1 <= int(r.headers["retry-after"]) <= 12, r.headers
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
    import openai
    with pytest.raises(openai.RateLimitError):
        airlock.openai(t["token"]).chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)


def test_token_rate_limits_use_the_estimate_and_credit_back(airlock):
    import httpx
    subject = f"tpm-{rand(6)}"
    t = airlock.mint("--env", "prod", "--model", "gpt-4o-mini", "--subject", subject)
    assert airlock.cli("rate-limit", "set", "--identity", subject, "--tpm", "1000").returncode == 0
    h = {"authorization": f"Bearer {t['token']}"}
    body = {"model": "gpt-4o-mini", "max_tokens": 400, "messages": [{"role": "user", "content": "hi"}]}
    # Each request is admitted on ~410 tokens and uses a few dozen: sequential ones keep
    # passing because the unused part comes back.
    for _ in range(6):
        r = httpx.post(airlock.url + "/v1/chat/completions", json=body, headers=h, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"
        assert int(r.headers["x-ratelimit-remaining-tokens"]) < 1000
    # One that could use more than a minute's tokens can never pass: said so, no retry hint.
    big = dict(body, max_tokens=5000)
    r = httpx.post(airlock.url + "/v1/chat/completions", json=big, headers=h, timeout=30)
    assert r.status_code == 429 and "max_tokens" in r.json()["error"]["message"], r.text
    listed = airlock.cli_json("rate-limit", "list")["rate_limits"]
    rl = next(x for x in listed if x["key"] == subject)
    assert rl["tpm"] == 1000 and rl["rpm"] is None
    assert airlock.cli("rate-limit", "remove", rl["id"]).returncode == 0
    r = httpx.post(airlock.url + "/v1/chat/completions", json=big, headers=h, timeout=30)
    assert r.status_code == 200 and "x-ratelimit-limit-tokens" not in r.headers


def test_what_the_provider_did_not_report_is_charged_in_full(airlock):
    """A stream without include_usage reports no tokens (and a reasoning model's hidden tokens
    never show in it): it is charged its whole reservation, never less than it really used, so
    budgets cannot be slipped past by not asking for usage."""
    import httpx
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "a few words"}]}
    # What the request really uses, as the provider reports it when asked.
    t0 = airlock.mint("--env", "prod", "--model", "gpt-4o-mini")
    real = None
    with httpx.stream("POST", airlock.url + "/v1/chat/completions", timeout=30,
                      json={**body, "stream_options": {"include_usage": True}},
                      headers={"authorization": f"Bearer {t0['token']}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"usage":{' in line:
                real = json.loads(line[6:])["usage"]
    assert real, "the mock reports usage when asked"
    real_cost = real["prompt_tokens"] * 150 + real["completion_tokens"] * 600
    t = airlock.mint("--env", "prod", "--model", "gpt-4o-mini", "--budget-usd", "0.0001")
    h = {"authorization": f"Bearer {t['token']}"}
    codes = []
    for _ in range(40):
        with httpx.stream("POST", airlock.url + "/v1/chat/completions", json=body, headers=h, timeout=30) as r:
            r.read()
            codes.append(r.status_code)
    n = codes.count(200)
    assert 429 in codes and n >= 1, codes
    b = next(x for x in airlock.cli_json("budget", "list")["budgets"] if x["key"] == t["id"])
    assert b["reserved_nanos"] == 0 and b["spent_nanos"] <= 100_000, b
    # Each is charged its whole max_tokens of output (50 x 600) and its input estimate, far
    # more than the few tokens it really had.
    per = b["spent_nanos"] / n
    assert b["spent_nanos"] % n == 0 and 50 * 600 < per < 50 * 600 + 10_000 and per > real_cost, (n, real_cost, b)


def test_token_counting_is_free_and_a_client_that_leaves_is_charged_a_bounded_amount(airlock):
    import httpx
    # count_tokens reports no usage and the provider does not bill it: it spends nothing.
    t = airlock.mint("--env", "prod", "--model", "claude-*", "--budget-usd", "0.001")
    an = airlock.anthropic(t["token"])
    words = [{"role": "user", "content": "word " * 300}]
    for _ in range(10):
        assert an.messages.count_tokens(model="claude-haiku-4-5", messages=words).input_tokens > 0
    b = next(x for x in airlock.cli_json("budget", "list")["budgets"] if x["key"] == t["id"])
    assert b["spent_nanos"] == 0 and b["reserved_nanos"] == 0, b
    # A client that asks for the world and hangs up mid-stream is charged its input and the
    # default output (4096 tokens), not its own max_tokens.
    from test_audit import Instance
    inst = Instance(airlock, "cut", toml_extra='[pricing."slow-*"]\ninput = 1.0\noutput = 1.0')
    try:
        t2 = json.loads(inst.cli("token", "mint", "--env", "prod", "--model", "slow-*",
                                 "--budget-usd", "5", "--json").stdout)
        body = {"model": "slow-model", "max_tokens": 1_000_000, "stream": True,
                "messages": [{"role": "user", "content": "tell me everything"}]}
        with httpx.stream("POST", inst.url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {t2['token']}"}) as r:
            assert r.status_code == 200
            next(r.iter_raw())
        deadline = time.time() + 10
        while time.time() < deadline:
            b = next(x for x in json.loads(inst.cli("budget", "list", "--json").stdout)["budgets"]
                     if x["key"] == t2["id"])
            if b["reserved_nanos"] == 0:
                break
            time.sleep(0.2)
        # 1000 nano-dollars a token: 4096 output tokens and a few dozen input.
        assert 4096 * 1000 < b["spent_nanos"] < 4096 * 1000 + 100_000, b
    finally:
        inst.stop()


def test_absurd_limits_and_counts_are_clean_answers(airlock):
    import httpx
    t = airlock.mint("--env", "prod", "--model", "gpt-4o-mini,text-embedding-3-small")
    assert airlock.cli("rate-limit", "set", "--token", t["id"], "--tpm", "100000000").returncode == 0
    h = {"authorization": f"Bearer {t['token']}"}
    huge = {"model": "gpt-4o-mini", "max_tokens": 2**63 - 1, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(airlock.url + "/v1/chat/completions", json=huge, headers=h, timeout=30)
    assert r.status_code in (200, 429), r.text
    ok = dict(huge, max_tokens=10)
    r = httpx.post(airlock.url + "/v1/chat/completions", json=ok, headers=h, timeout=30)
    assert r.status_code == 200 and r.headers["x-ratelimit-limit-tokens"] == "100000000", r.text
    # A request bigger than a minute's tokens: refused for good, no retry hint.
    small = airlock.mint("--env", "prod", "--model", "gpt-4o-mini,text-embedding-3-small")
    assert airlock.cli("rate-limit", "set", "--token", small["id"], "--tpm", "100").returncode == 0
    hs = {"authorization": f"Bearer {small['token']}"}
    r = httpx.post(airlock.url + "/v1/chat/completions", json=dict(ok, max_tokens=500), headers=hs, timeout=30)
    assert r.status_code == 429 and r.headers["x-should-retry"] == "false" and "retry-after" not in r.headers
    # Embeddings produce no output tokens, so they reserve none.
    r = httpx.post(airlock.url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"},
                   headers=hs, timeout=30)
    assert r.status_code == 200, r.text
