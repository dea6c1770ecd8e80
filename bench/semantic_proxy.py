#!/usr/bin/env python3
"""Semantic-cache quality through the real proxy (`cargo xtask bench semantic` runs it).

Starts a fake OpenAI upstream (stdlib only) and the `llm-cache` binary with
`type: local-semantic`, then for every labelled pair sends `a` and then `b` as chat requests in
a namespace of the pair's own (`cache: {namespace: ...}`): `b` counts as served from the cache
when the reply carries `x-litellm-semantic-similarity` (the proxy's semantic-hit header).
Reports should-hit recall, trap false hits, per category, and the proxy's CPU per `b` request
(from /proc/<pid>/stat, so HTTP handling, embedding, search and checks together).

Usage: semantic_proxy.py --bin target/release/llm-cache --pairs bench/data/semantic-pairs-dev.jsonl
       --threshold 0.75 [--model-dir DIR] [--label NAME] [--port 18600]
Without --model-dir the proxy is pointed at an empty folder, so `local-semantic` falls back to
the bundled potion-base-2M.
"""
import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

COUNT = {"n": 0}
LOCK = threading.Lock()


class Fake(http.server.BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        with LOCK:
            COUNT["n"] += 1
            k = COUNT["n"]
        body = json.dumps({
            "id": f"chatcmpl-{k}", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"answer #{k}"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def post(url, text, ns):
    body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": text}],
                       "cache": {"namespace": ns}}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        return r.headers.get("x-litellm-semantic-similarity")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--model-dir")
    ap.add_argument("--label", default="")
    ap.add_argument("--port", type=int, default=18600)
    a = ap.parse_args()
    pairs = [json.loads(line) for line in open(a.pairs) if line.strip()]

    fake = http.server.ThreadingHTTPServer(("127.0.0.1", a.port + 1), Fake)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "config.yaml")
    with open(cfg, "w") as f:
        f.write(f"""model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: http://127.0.0.1:{a.port + 1}/v1
      api_key: sk-fake
litellm_settings:
  cache: true
  cache_params:
    type: local-semantic
    similarity_threshold: {a.threshold}
""")
    env = dict(os.environ)
    env["LLM_CACHE_BERT_MODEL_DIR"] = a.model_dir or os.path.join(tmp, "no-model")
    log = open(os.path.join(tmp, "proxy.log"), "w")
    proxy = subprocess.Popen([a.bin, "serve", "--config", cfg, "--host", "127.0.0.1",
                              "--port", str(a.port)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{a.port}/v1/chat/completions"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{a.port}/health/liveliness", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                if proxy.poll() is not None:
                    sys.exit(f"proxy exited: see {log.name}")
                time.sleep(0.1)
        served, walls, ticks = [], [], 0
        for p in pairs:
            ns = f"pair-{p['id']}"
            post(url, p["a"], ns)
            before = cpu_ticks(proxy.pid)
            t0 = time.perf_counter()
            sim = post(url, p["b"], ns)
            walls.append(time.perf_counter() - t0)
            ticks += cpu_ticks(proxy.pid) - before
            served.append(sim is not None)
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        fake.shutdown()
    embedder = "unknown"
    for line in open(log.name):
        if "embeds with all-MiniLM-L6-v2" in line:
            embedder = "all-MiniLM-L6-v2"
    if embedder == "unknown":
        embedder = "potion-base-2M (bundled)"

    pos = [i for i, p in enumerate(pairs) if p["same_answer"]]
    neg = [i for i, p in enumerate(pairs) if not p["same_answer"]]
    recall = sum(served[i] for i in pos) / len(pos)
    fp = sum(served[i] for i in neg) / len(neg)
    cats = {}
    for i, p in enumerate(pairs):
        cats.setdefault(p["category"], []).append(served[i])
    hz = os.sysconf("SC_CLK_TCK")
    cpu_ms = ticks / hz * 1000 / len(pairs)
    print(f"\n### Through the proxy: {a.label or embedder}, similarity_threshold {a.threshold}\n")
    print(f"`llm-cache serve`, `type: local-semantic`, default guard, embedder: {embedder}; "
          f"{len(pairs)} pairs, `a` then `b` in a namespace per pair, sequential.\n")
    print("| recall | trap false hits | " + " | ".join(cats) + " | proxy CPU per `b` request | wall p50 |")
    print("|---|---|" + "---|" * len(cats) + "---|---|")
    print(f"| {recall:.1%} | {fp:.1%} | "
          + " | ".join(f"{100 * sum(v) / len(v):.0f}%" for v in cats.values())
          + f" | {cpu_ms:.2f} ms | {statistics.median(walls) * 1000:.2f} ms |")


if __name__ == "__main__":
    main()
