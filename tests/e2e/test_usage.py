"""Usage and cost (issue 8): a known sequence of requests, plain and streaming, through the
official SDKs yields exact integer nano-dollar totals per dimension in `airlock usage --json`,
computed here from the usage each response reported and the shipped price table."""
import json
import time

from conftest import rand

# Nano-dollars per token (dollars per million x 1000), as in crates/airlock-gateway/src/prices.toml.
RATES = {"gpt-4o-mini": (150, 600), "claude-haiku-4-5": (1000, 5000), "text-embedding-3-small": (20, 0)}
MSG = [{"role": "user", "content": "count the cost of this"}]


def usage(airlock, *args):
    r = airlock.cli("usage", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


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
