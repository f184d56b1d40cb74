"""Invariant I1, checked after every other test has run (this file sorts last): the canary
provider key's bytes appear nowhere they must not."""
import httpx


def test_canary_never_leaks(airlock):
    canary = airlock.canary.encode()
    with httpx.Client() as c:
        metrics = c.get(airlock.url + "/metrics").content
    assert b"airlock_requests_total" in metrics
    assert canary not in metrics
    # It is valid Prometheus text, with the spend and refusal families the suite exercised.
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(metrics.decode())}
    value = lambda name, **labels: sum(s.value for s in fams[name].samples
                                       if all(s.labels.get(k) == v for k, v in labels.items()))
    assert value("airlock_cost_nanodollars") > 0
    assert value("airlock_budget_refusals") > 0 and value("airlock_rate_limited") > 0
    assert value("airlock_token_exchanges", outcome="granted") > 0
    assert value("airlock_token_exchanges", outcome="refused") > 0
    # Latency histograms: cumulative buckets ending in the count, for the endpoints used.
    for name, labels in [("airlock_request_duration_seconds", {"endpoint": "/v1/chat/completions"}),
                         ("airlock_request_duration_seconds", {"endpoint": "/v1/messages"}),
                         ("airlock_upstream_ttfb_seconds", {}), ("airlock_audit_lag_seconds", {})]:
        samples = [s for s in fams[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
        buckets = [s.value for s in samples if s.name.endswith("_bucket")]
        count = next(s.value for s in samples if s.name.endswith("_count"))
        assert count > 0 and buckets == sorted(buckets) and buckets[-1] == count, (name, samples)
    assert "airlock_secret_read_failures" in fams and "airlock_audit_queue_depth" in fams
    # Budget use per budget: the suite's budgets, each with its limit and what it spent.
    limits = {s.labels["budget"]: s.value for s in fams["airlock_budget_limit_nanodollars"].samples}
    spent = {s.labels["budget"]: s.value for s in fams["airlock_budget_spent_nanodollars"].samples}
    assert limits and set(limits) == set(spent) and all(b.startswith("bud_") for b in limits)
    assert any(v > 0 for v in spent.values())
    assert value("airlock_anomalies") == 0, "the session's traffic is too young to raise anomalies"

    hits = []
    # Every file the suite left behind: databases (with their WAL) and logs of every airlock
    # instance, audit exports, checkpoint copies. Only the key file itself may hold the key.
    files = [f for f in airlock.tmp.rglob("*") if f.is_file() and f.name != "anthropic.key"]
    assert any(f.name == "airlock.db" for f in files)
    assert sum(1 for f in files if f.name == "airlock.db") > 1, "the audit tests' instances are swept too"
    for f in files:
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            continue  # removed since the listing (a running instance's transient file)
        if canary in data:
            hits.append(str(f))
    log = airlock.server_log.read_bytes() if airlock.server_log.exists() else (airlock.tmp / "server.log").read_bytes()
    assert b"DEBUG" in log, "the server ran at debug level, so the log check means something"
    if canary in log:
        hits.append("server log")
    responses = b"".join(airlock.captured)
    assert len(airlock.captured) > 50, "responses were recorded"
    if canary in responses:
        hits.append("a response or CLI output")
    assert not hits, f"canary key found in: {hits}"
    # the key was really in use: the mock saw it (that is the only place it belongs)
    stats = c = httpx.get(f"http://127.0.0.1:{airlock.mocks['good']}/mock/stats").json()
    assert stats["requests"] > 10 and stats["last"]["key"] == "ok"
