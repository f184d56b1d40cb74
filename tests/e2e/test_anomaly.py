"""Anomaly detection (issue 8): a simulated week of normal traffic, driven through the test clock
(AIRLOCK_TEST_CLOCK=1 lets the owner move the detector's clock, so a week takes seconds), raises
nothing; then a burst from a client address range never seen before: the webhook receiver (a
small HTTP server here) gets HMAC-signed alerts within the same bucket, the credential is
suspended because the policy says so, and resuming it restores service."""
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from conftest import free_port, rand
from test_audit import Instance

MSG = [{"role": "user", "content": "hello"}]


class Receiver:
    """Collects webhook deliveries; answers 503 to the first one so that retries are exercised."""

    def __init__(self):
        self.got = []
        self.attempts = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.attempts += 1
                if outer.attempts == 1:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.got.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def verify(secret, headers, body):
    sig = headers.get("x-airlock-signature") or headers.get("X-Airlock-Signature")
    parts = dict(p.split("=", 1) for p in sig.split(","))
    mac = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300


def test_normal_week_is_quiet_and_a_burst_from_a_new_range_alerts_and_suspends(airlock):
    secret = rand(40)
    rx = Receiver()
    inst = None
    # A MaxMind-format country file: this machine's usual loopback range is "NL", 127.1/16 "BR".
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
    geo = airlock.tmp / "countries.mmdb"
    w = MMDBWriter(ip_version=4, database_type="GeoLite2-Country")
    w.insert_network(IPSet(["127.0.0.0/16"]), {"country": {"iso_code": "NL"}})
    w.insert_network(IPSet(["127.1.0.0/16"]), {"country": {"iso_code": "BR"}})
    w.to_db_file(str(geo))
    try:
        inst = Instance(airlock, "anomaly", env={
            "AIRLOCK_TEST_CLOCK": "1",
            "ANOMALY_WEBHOOK_SECRET": secret,
        }, toml_extra=f"""[anomaly]
bucket = "1h"
baseline_days = 7
min_requests = 15
learning_hours = 24
suspend_credential = ["rate_spike"]
geoip = "{geo}"
webhook_url = "http://127.0.0.1:{rx.port}/hook"
webhook_secret = "env:ANOMALY_WEBHOOK_SECRET"
""")
        admin = {"authorization": f"Bearer {inst.admin}"}
        home = httpx.Client(timeout=30)

        def advance(secs):
            r = home.post(inst.url + "/admin/v1/test/clock", json={"advance_secs": secs}, headers=admin)
            assert r.status_code == 200, r.text

        # A week (plus a day) of 2-4 requests an hour from the usual address, every hour.
        for hour in range(8 * 24):
            for _ in range(2 + hour % 3):
                r = inst.chat(client=home)
                assert r.status_code == 200, r.text
            advance(3600)
        time.sleep(1.5)
        assert rx.attempts == 0, [json.loads(b) for _, b in rx.got]
        quiet = inst.cli("anomalies", "--json")
        assert quiet.returncode == 0, quiet.stderr
        assert json.loads(quiet.stdout) == []
        m = httpx.get(inst.url + "/metrics").text
        assert 'airlock_anomalies_total{kind="rate_spike",subject="credential"} 0' in m

        # The burst: 30 requests within the hour, from 127.1.0.0/24, never seen before.
        away = httpx.Client(timeout=30, transport=httpx.HTTPTransport(local_address="127.1.0.9"))
        codes = [inst.chat(client=away).status_code for _ in range(30)]
        assert codes[:15] == [200] * 15, codes
        # The first delivery attempt is refused (503) and retried after a second.
        deadline = time.time() + 20
        while time.time() < deadline:
            kinds = {(json.loads(b)["anomaly"]["kind"], json.loads(b)["anomaly"]["subject_kind"]) for _, b in rx.got
                     if json.loads(b)["anomaly"].get("window", "bucket") == "bucket"}
            if {("new_ip_range", "credential"), ("new_country", "credential"), ("rate_spike", "credential")} <= kinds:
                break
            time.sleep(0.2)
        alerts = [json.loads(b) for _, b in rx.got]
        assert {("new_ip_range", "credential"), ("rate_spike", "credential")} <= kinds, alerts
        for headers, body in rx.got:
            assert verify(secret, {k.lower(): v for k, v in headers.items()}, body), headers
            assert not verify(secret + "x", {k.lower(): v for k, v in headers.items()}, body)
            airlock.captured.append(body)
        spike = next(a for a in alerts if a["anomaly"]["kind"] == "rate_spike"
                     and a["anomaly"]["subject_kind"] == "credential" and a["anomaly"]["window"] == "bucket")
        assert spike["anomaly"]["subject"] == "prod"
        assert spike["anomaly"]["observed"] == 15, spike
        assert spike["anomaly"]["median"] == 3 and spike["anomaly"]["suspend_credential"] is True
        assert "suspended" in spike["action"]
        country = next(a for a in alerts if a["anomaly"]["kind"] == "new_country"
                       and a["anomaly"]["subject_kind"] == "credential")
        assert country["anomaly"]["value"] == "BR", country
        new_range = next(a for a in alerts if a["anomaly"]["kind"] == "new_ip_range")
        assert new_range["anomaly"]["value"] == "127.1.0.0/24"
        assert new_range["anomaly"]["client_ip"] == "127.1.0.9"
        assert new_range["anomaly"]["suspend_credential"] is False
        # Alerts came within the burst's bucket: the detector clock was not moved since.
        bucket = spike["anomaly"]["bucket_start_ms"]
        assert all(a["anomaly"]["bucket_start_ms"] == bucket for a in alerts)

        # Suspended: a refusal that says so, in the SDK's dialect.
        r = inst.chat(client=home)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "credential_suspended"
        assert "credential resume" in r.json()["error"]["message"]
        # Audited, listed, counted.
        listed = json.loads(inst.cli("anomalies", "--json").stdout)
        assert {x["outcome"] for x in listed} >= {"alerted", "acted"}, listed
        assert any(x["target"] == "prod" and "rate_spike" in x["reason"] for x in listed)
        text = inst.cli("anomalies")
        assert "rate_spike on credential prod" in text.stdout, text.stdout
        m = httpx.get(inst.url + "/metrics").text
        counted = {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in m.splitlines()
                   if l.startswith("airlock_anomalies_total{")}
        assert counted['airlock_anomalies_total{kind="rate_spike",subject="credential"}'] >= 1, counted
        assert 'airlock_anomalies_total{kind="new_ip_range",subject="credential"} 1' in m
        assert 'airlock_anomaly_webhook_deliveries_total{outcome="delivered"}' in m
        # Resuming restores service.
        r = inst.cli("credential", "resume", "prod")
        assert r.returncode == 0, r.stderr
        assert inst.chat(client=home).status_code == 200
        # The test clock is for the owner only, and only on a server started with it.
        assert httpx.post(airlock.url + "/admin/v1/test/clock", json={"advance_secs": 1},
                          headers={"authorization": f"Bearer {airlock.admin}"}).status_code == 404
    finally:
        rx.stop()
        if inst:
            inst.stop()


def test_anomaly_configuration_errors_are_clear(airlock, tmp_path):
    import subprocess
    from conftest import BIN
    cfg = tmp_path / "a.toml"
    base = open(airlock.config).read()
    for extra, needle in [
        ('[anomaly]\nsuspend_credential = ["nonsense"]', "not one of"),
        ('[anomaly]\nwebhook_url = "http://example.com/hook"\nwebhook_secret = "env:X"', "must be an https URL"),
        ('[anomaly]\nwebhook_url = "https://example.com/hook"', "needs webhook_secret"),
        ('[anomaly]\nbucket = "5s"', "between 1m and 24h"),
        ('[anomaly]\nwatch = ["new_country"]', "needs geoip"),
        ('[anomaly]\nmin_requests = 0', "at least 1"),
        ('[otel]\nendpoint = "ftp://collector"', "must be an http(s) base URL"),
    ]:
        cfg.write_text(base + "\n" + extra + "\n")
        r = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (extra, r.stderr)
        assert needle in r.stderr, (extra, r.stderr)
