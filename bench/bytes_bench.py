#!/usr/bin/env python3
"""Bytes per cached entry in Redis: llm-cache's proxy and LiteLLM 1.108.7, same answers, one run.

`cargo xtask bench bytes` runs it (with the venv of LiteLLM in .bench/venv, the Redis test
service, and a release build of the proxy). Steps:

1. A fake OpenAI upstream (aiohttp, in this process) serves fixed, realistic answers by case:
   a short chat answer, a ~2 KB answer, an ~8 KB answer with tool calls, a streamed answer
   (~1 KB, SSE) and an embeddings batch of 16 inputs x 1536 floats (OpenAI's number style:
   shortest float32 text).
2. LiteLLM: `litellm.cache = Cache(type="redis", namespace=...)`, then `litellm.completion` /
   `litellm.embedding` with `caching=True` for each case, through its own code path.
3. llm-cache: the `llm-cache` binary (type: redis, defaults, another namespace) gets the same
   requests over HTTP.
4. For each case and each side: the keys written, their value bytes (`STRLEN`) and
   `MEMORY USAGE` (what Redis really holds per entry), and llm-cache / LiteLLM as ratios.

Usage: bytes_bench.py --proxy PATH/llm-cache [--redis-port 17001] [--markdown OUT.md]
"""
import argparse
import asyncio
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

import litellm  # noqa: E402
import redis  # noqa: E402
from aiohttp import web  # noqa: E402
from litellm.caching.caching import Cache  # noqa: E402

VOCAB = (
    "the a cache is an answer that we store so the next request with the same prompt returns "
    "quickly without calling the model again when you design such a system consider keys "
    "expiry memory limits eviction policies and consistency between several replicas in "
    "production because users expect fast responses and low cost while correctness matters "
    "most never serve a wrong answer prefer a miss when unsure measure everything latency "
    "throughput bytes per entry compression ratios python rust redis cluster sentinel disk "
    "object storage semantic similarity embeddings vectors threshold guard verifier tokens "
    "prompt completion usage streaming events chunks function tool call arguments json schema"
).split()


def text(n_chars, seed):
    rnd = random.Random(seed)
    out, n = [], 0
    while n < n_chars:
        w = rnd.choice(VOCAB)
        if rnd.random() < 0.08:
            w = w.capitalize() + ","
        if rnd.random() < 0.05:
            w += ".\n\n" if rnd.random() < 0.3 else "."
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:n_chars]


def chat_response(case, content, tool_calls=None):
    msg = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    words = len(content.split()) if content else 0
    return {
        "id": f"chatcmpl-{case}BfL0x9QeA1b2C3d4E5f6G7h8",
        "object": "chat.completion",
        "created": 1795000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": msg, "logprobs": None,
                     "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": 42, "completion_tokens": words, "total_tokens": 42 + words,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
        "service_tier": "default",
        "system_fingerprint": "fp_560af6e559",
    }


def tool_calls(seed):
    rnd = random.Random(seed)
    calls = []
    for i in range(3):
        args = {"query": text(300, seed + i), "filters": {"year": 2020 + i, "tags": rnd.sample(VOCAB, 5)},
                "limit": 10}
        calls.append({"id": f"call_{seed}{i}Xq7LmN2pR4sT6vW8y", "type": "function",
                      "function": {"name": f"search_documents_{i}", "arguments": json.dumps(args)}})
    return calls


def f32_text(v):
    # Shortest text that reads back as this float32 (what OpenAI's embeddings look like).
    for digits in range(1, 18):
        s = f"{v:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(s)))[0] == v:
            if "e" in s:
                return repr(float(s))
            return s
    return repr(v)


def embedding_response(n, dims, seed):
    rnd = random.Random(seed)
    data = []
    for i in range(n):
        vec = [struct.unpack("<f", struct.pack("<f", rnd.gauss(0, 0.03)))[0] for _ in range(dims)]
        data.append({"object": "embedding", "index": i, "embedding": vec})
    return {"object": "list", "data": data, "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8 * n, "total_tokens": 8 * n}}


def dumps_embeddings(resp):
    # JSON with the floats printed as float32 text.
    parts = []
    for item in resp["data"]:
        nums = ",".join(f32_text(v) for v in item["embedding"])
        parts.append('{"object":"embedding","index":%d,"embedding":[%s]}' % (item["index"], nums))
    return ('{"object":"list","data":[%s],"model":"%s","usage":%s}'
            % (",".join(parts), resp["model"], json.dumps(resp["usage"], separators=(",", ":"))))


CASES = {
    "short chat answer": chat_response("s", text(200, 1)),
    "2 KB answer": chat_response("m", text(2000, 2)),
    "8 KB answer with tool calls": chat_response("l", text(6500, 3), tool_calls(3)),
}
STREAM_CONTENT = text(1000, 4)
EMBEDDINGS = embedding_response(16, 1536, 5)
EMBEDDINGS_TEXT = dumps_embeddings(EMBEDDINGS)


def case_of(body):
    last = body["messages"][-1]["content"]
    for name in CASES:
        if name in last:
            return name
    return "stream"


async def chat(request):
    body = await request.json()
    name = case_of(body)
    if body.get("stream"):
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        words = STREAM_CONTENT.split(" ")
        base = {"id": "chatcmpl-streamBfL0x9QeA1b2C3d4", "object": "chat.completion.chunk",
                "created": 1795000000, "model": "gpt-4o-mini-2024-07-18",
                "system_fingerprint": "fp_560af6e559"}
        first = dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None}])
        await resp.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        for i, w in enumerate(words):
            piece = w if i == 0 else " " + w
            chunk = dict(base, choices=[{"index": 0, "delta": {"content": piece},
                                         "logprobs": None, "finish_reason": None}])
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        last = dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
        await resp.write(b"data: " + json.dumps(last).encode() + b"\n\n")
        usage = dict(base, choices=[], usage={"prompt_tokens": 42, "completion_tokens": len(words),
                                              "total_tokens": 42 + len(words)})
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp
    return web.json_response(CASES[name], dumps=lambda v: json.dumps(v, separators=(",", ":")))


async def embeddings(request):
    return web.Response(text=EMBEDDINGS_TEXT, content_type="application/json")


def keys_of(r, ns):
    return sorted(k for k in r.scan_iter(match=f"{ns}:*", count=1000))


def measure(r, keys):
    strlen = [r.strlen(k) for k in keys]
    mem = [r.memory_usage(k, samples=0) or 0 for k in keys]
    n = len(keys)
    return n, (sum(strlen) / n if n else 0), (sum(mem) / n if n else 0)


def request_body(name):
    return {"model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are helpful."},
                         {"role": "user", "content": f"Case: {name}. Answer please."}]}


def wait_written(r, ns, before, want, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = keys_of(r, ns)
        new = [k for k in now if k not in before]
        if len(new) >= want:
            time.sleep(0.3)  # late writes of the same case
            now = keys_of(r, ns)
            return [k for k in now if k not in before]
        time.sleep(0.05)
    return [k for k in keys_of(r, ns) if k not in before]


def run_litellm(base, r, ns, results):
    litellm.cache = Cache(type="redis", host="127.0.0.1", port=r.connection_pool.connection_kwargs["port"],
                          namespace=ns)
    common = dict(api_base=base, api_key="sk-bench", caching=True)
    for name in CASES:
        before = keys_of(r, ns)
        litellm.completion(model="openai/gpt-4o-mini", messages=request_body(name)["messages"], **common)
        results[(name, "litellm")] = measure(r, wait_written(r, ns, before, 1))
    before = keys_of(r, ns)
    stream = litellm.completion(model="openai/gpt-4o-mini", messages=request_body("stream")["messages"],
                                stream=True, **common)
    for _ in stream:
        pass
    results[("streamed answer", "litellm")] = measure(r, wait_written(r, ns, before, 1))
    before = keys_of(r, ns)
    inputs = [f"document number {i} about caching" for i in range(16)]
    litellm.embedding(model="openai/text-embedding-3-small", input=inputs, **common)
    results[("embeddings 16 x 1536", "litellm")] = measure(r, wait_written(r, ns, before, 16))


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def run_llm_cache(proxy_bin, base, r, ns, results, side="llm-cache", extra=""):
    port = 18477
    cfg = f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-bench}}
  - model_name: text-embedding-3-small
    litellm_params: {{model: openai/text-embedding-3-small, api_base: "{base}", api_key: sk-bench}}
litellm_settings:
  cache: true
  cache_params: {{type: redis, host: 127.0.0.1, port: {r.connection_pool.connection_kwargs["port"]}, namespace: {ns}{extra}}}
"""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg)
        proc = subprocess.Popen([proxy_bin, "serve", "--config", path, "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(500):
                try:
                    with urllib.request.urlopen(url + "/health/readiness", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except Exception:
                    time.sleep(0.02)
            for name in CASES:
                before = keys_of(r, ns)
                post(url + "/v1/chat/completions", request_body(name))
                results[(name, side)] = measure(r, wait_written(r, ns, before, 1))
            before = keys_of(r, ns)
            post(url + "/v1/chat/completions", dict(request_body("stream"), stream=True))
            results[("streamed answer", side)] = measure(r, wait_written(r, ns, before, 1))
            before = keys_of(r, ns)
            inputs = [f"document number {i} about caching" for i in range(16)]
            post(url + "/v1/embeddings", {"model": "text-embedding-3-small", "input": inputs})
            results[("embeddings 16 x 1536", side)] = measure(r, wait_written(r, ns, before, 16))
        finally:
            proc.terminate()
            proc.wait(timeout=20)


async def serve(port):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--redis-port", type=int, default=17001)
    ap.add_argument("--upstream-port", type=int, default=18476)
    ap.add_argument("--markdown")
    a = ap.parse_args()
    loop = asyncio.new_event_loop()
    runner = loop.run_until_complete(serve(a.upstream_port))
    import threading
    threading.Thread(target=loop.run_forever, daemon=True).start()
    base = f"http://127.0.0.1:{a.upstream_port}/v1"
    r = redis.Redis(port=a.redis_port)
    stamp = f"{int(time.time())}"
    results = {}
    spaces = [f"bytes-llmc-{stamp}", f"bytes-llmc-json-{stamp}", f"bytes-litellm-{stamp}"]
    run_llm_cache(a.proxy, base, r, spaces[0], results)
    run_llm_cache(a.proxy, base, r, spaces[1], results, "llm-cache json", ", entry_format: json")
    run_litellm(base, r, spaces[2], results)
    for ns in spaces:
        for k in keys_of(r, ns):
            r.delete(k)
    names = list(CASES) + ["streamed answer", "embeddings 16 x 1536"]
    lines = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Redis "
        f"{r.info('server')['redis_version']}, LiteLLM 1.108.7, load average "
        f"{os.getloadavg()[0]:.2f}. Totals per response over all its entries (llm-cache stores "
        "one entry per embeddings input, LiteLLM one per request); llm-cache with its defaults "
        "(compact entries) and with `entry_format: json`.",
        "",
        "| response | upstream bytes | entries llm-cache / LiteLLM | value bytes: compact / json / LiteLLM | compact ÷ LiteLLM | `MEMORY USAGE`: compact / json / LiteLLM | compact ÷ LiteLLM |",
        "|---|---|---|---|---|---|---|",
    ]
    upstream = {n: len(json.dumps(CASES[n], separators=(",", ":"))) for n in CASES}
    upstream["streamed answer"] = len(STREAM_CONTENT)
    upstream["embeddings 16 x 1536"] = len(EMBEDDINGS_TEXT)
    for n in names:
        got = [results.get((n, side)) for side in ("llm-cache", "llm-cache json", "litellm")]
        if any(g is None or not g[0] for g in got):
            lines.append(f"| {n} | {upstream[n]:,} | missing entries: {got} | | | | |")
            continue
        val = [g[0] * g[1] for g in got]
        mem = [g[0] * g[2] for g in got]
        lines.append(
            f"| {n} | {upstream[n]:,} | {got[0][0]} / {got[2][0]} | "
            f"{val[0]:,.0f} / {val[1]:,.0f} / {val[2]:,.0f} | **{val[0] / val[2]:.0%}** | "
            f"{mem[0]:,.0f} / {mem[1]:,.0f} / {mem[2]:,.0f} | **{mem[0] / mem[2]:.0%}** |")
    out = "\n".join(lines)
    print(out)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(out + "\n")
    loop.call_soon_threadsafe(loop.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
