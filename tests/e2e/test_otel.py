"""OpenTelemetry traces (issue 8): with `[otel] endpoint` set, every proxied request becomes one
OTLP span (JSON over HTTP, received here by a small collector) with the GenAI semantic
conventions, a child of the caller's W3C traceparent; no key, token or prompt unless prompts are
opted in."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai

from conftest import free_port, rand
from test_audit import Instance


class Collector:
    def __init__(self):
        self.bodies = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                assert self.path == "/v1/traces", self.path
                assert self.headers.get("content-type") == "application/json"
                outer.bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self):
        out = []
        for b in self.bodies:
            for rs in json.loads(b)["resourceSpans"]:
                svc = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        s["_service"] = svc["service.name"]["stringValue"]
                        s["_attrs"] = {a["key"]: next(iter(a["value"].values())) for a in s["attributes"]}
                        out.append(s)
        return out

    def wait_for(self, pred, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [s for s in self.spans() if pred(s)]
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no matching span among {self.spans()}")

    def stop(self):
        self.server.shutdown()


def test_spans_follow_genai_conventions_and_carry_no_prompt_or_secret(airlock):
    col = Collector()
    inst = None
    try:
        inst = Instance(airlock, "otel", env={"AIRLOCK_OTEL__ENDPOINT": f"http://127.0.0.1:{col.port}"})
        trace_id, parent = rand(32, "0123456789abcdef"), rand(16, "0123456789abcdef")
        secret_prompt = f"prompt-{rand(20)}"
        oa = openai.OpenAI(base_url=inst.url + "/v1", api_key=inst.token, max_retries=0,
                           default_headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        r = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": secret_prompt}])
        chunks = list(oa.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": secret_prompt}]))
        streamed = next(c.usage for c in chunks if c.usage)
        try:
            oa.chat.completions.create(model="not-served-anywhere", messages=[{"role": "user", "content": "x"}])
        except openai.NotFoundError:
            pass
        spans = col.wait_for(lambda s: s["_attrs"].get("gen_ai.request.model") == "not-served-anywhere")
        mine = [s for s in col.spans() if s["traceId"] == trace_id]
        assert len(mine) == 3, mine
        ok = [s for s in mine if s["_attrs"]["airlock.outcome"] == "ok"]
        assert len(ok) == 2
        for s in mine:
            assert s["parentSpanId"] == parent and len(s["spanId"]) == 16
            assert s["kind"] == 3 and s["_service"] == "airlock"
            assert int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"]) > 0
            assert s["_attrs"]["gen_ai.operation.name"] == "chat"
        plain = next(s for s in ok if s["_attrs"]["airlock.stream"] is False)
        assert plain["name"] == "chat gpt-4o-mini"
        assert plain["_attrs"]["gen_ai.provider.name"] == "openai-compatible"
        assert plain["_attrs"]["gen_ai.request.model"] == "gpt-4o-mini"
        assert plain["_attrs"]["gen_ai.usage.input_tokens"] == str(r.usage.prompt_tokens)
        assert plain["_attrs"]["gen_ai.usage.output_tokens"] == str(r.usage.completion_tokens)
        assert plain["_attrs"]["airlock.credential"] == "prod"
        assert plain["status"]["code"] == 1 and "error.type" not in plain["_attrs"]
        stream = next(s for s in ok if s["_attrs"]["airlock.stream"] is True)
        assert stream["_attrs"]["gen_ai.usage.output_tokens"] == str(streamed.completion_tokens)
        refused = spans[0]
        assert refused["_attrs"]["error.type"] == "refused" and refused["status"]["code"] == 2
        assert refused["_attrs"]["http.response.status_code"] == "404"
        # Without a traceparent, a span starts its own trace.
        httpx.post(inst.url + "/v1/chat/completions", headers={"authorization": f"Bearer {inst.token}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
        lone = col.wait_for(lambda s: s["traceId"] != trace_id and "parentSpanId" not in s)
        assert len(lone[0]["traceId"]) == 32
        # Never the prompt, the token or the key.
        raw = b"".join(col.bodies)
        airlock.captured.append(raw)
        assert secret_prompt.encode() not in raw
        assert inst.token.encode() not in raw
        assert airlock.canary.encode() not in raw
        m = httpx.get(inst.url + "/metrics").text
        assert 'airlock_otel_spans_total{outcome="exported"}' in m
    finally:
        col.stop()
        if inst:
            inst.stop()


def test_prompts_only_when_opted_in(airlock):
    col = Collector()
    inst = None
    try:
        inst = Instance(airlock, "otel-prompts", env={"AIRLOCK_OTEL__ENDPOINT": f"http://127.0.0.1:{col.port}",
                                                        "AIRLOCK_OTEL__CAPTURE_PROMPTS": "true",
                                                        "AIRLOCK_OTEL__SERVICE_NAME": "gw-eu"})
        words = f"prompt-{rand(20)}"
        oa = openai.OpenAI(base_url=inst.url + "/v1", api_key=inst.token, max_retries=0)
        oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": words}])
        span = col.wait_for(lambda s: "gen_ai.input.messages" in s["_attrs"])[0]
        assert span["_service"] == "gw-eu"
        msgs = json.loads(span["_attrs"]["gen_ai.input.messages"])
        assert msgs["messages"][0]["content"] == words
        assert "model" not in msgs, "only the prompt fields"
        airlock.captured.append(b"".join(col.bodies))
    finally:
        col.stop()
        if inst:
            inst.stop()
