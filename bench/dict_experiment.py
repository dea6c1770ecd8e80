"""Would a zstd dictionary with entropy tables beat the built-in raw-content dictionary v1?

An experiment, not part of any build: it finalizes dict-v1's content with Huffman and FSE
tables (ZDICT_finalizeDictionary of the system's libzstd, through ctypes, at level 6), then
compresses chat answers with v1 and with the finalized dictionary and times decompression
with each (prepared DDict, one context, many rounds; the ctypes call costs the same in both).

Training text: the English prose of this repository's docs (docs/reliability.md kept out) in
the JSON skeletons of OpenAI, Anthropic, tool-call and streamed answers. Evaluated: the chat
answers of bench/bytes_bench.py (its vocabulary) and answers whose text is
docs/reliability.md (prose not trained on).

    python3 bench/dict_experiment.py [--write PATH]    (needs libzstd.so.1: Debian's libzstd1)

`--write` also saves the finalized dictionary. That is how
crates/cache-core/src/envelope/dict-v2.bin was made (libzstd 1.5.4, 2026-12-01); its bytes
never change (entries compressed with it must stay readable): a new dictionary is a new codec.
"""
import ctypes
import glob
import json
import os
import random
import re
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Z = ctypes.CDLL("libzstd.so.1")
Z.ZSTD_compress_usingDict.restype = ctypes.c_size_t
Z.ZSTD_createCCtx.restype = ctypes.c_void_p
Z.ZSTD_createDCtx.restype = ctypes.c_void_p
Z.ZSTD_createDDict.restype = ctypes.c_void_p
Z.ZSTD_decompress_usingDDict.restype = ctypes.c_size_t
Z.ZDICT_finalizeDictionary.restype = ctypes.c_size_t
Z.ZDICT_isError.restype = ctypes.c_uint
V, S, I = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
Z.ZSTD_compress_usingDict.argtypes = [V, V, S, V, S, V, S, I]
Z.ZSTD_createDDict.argtypes = [V, S]
Z.ZSTD_decompress_usingDDict.argtypes = [V, V, S, V, S, V]
Z.ZDICT_isError.argtypes = [S]
class Params(ctypes.Structure):
    _fields_ = [("compressionLevel", ctypes.c_int), ("notificationLevel", ctypes.c_uint), ("dictID", ctypes.c_uint)]
content = open(os.path.join(ROOT, "crates/cache-core/src/envelope/dict-v1.txt"), "rb").read()
# training samples: skeletons of dict-v1 with English sentences (semantic pairs) as the text
# English prose of this repository's docs (the evaluation file kept out) as the answers' text
train_text = " ".join(open(p).read() for p in sorted(glob.glob(ROOT + "/docs/**/*.md", recursive=True))
                      if not p.endswith("reliability.md"))
sents = [x.strip() for x in re.split(r"(?<=[.!?])\s+", re.sub(r"[`*|#\[\]()]", "", train_text)) if 20 < len(x.strip()) < 400]
rnd = random.Random(7)
def para(n):
    out = []
    while sum(len(s) + 1 for s in out) < n:
        out.append(rnd.choice(sents))
    return " ".join(out)
def sample(i):
    n = rnd.choice([200, 400, 800, 1600, 3000])
    t = para(n)
    kind = i % 4
    if kind == 0:
        return json.dumps({"id": "chatcmpl-%08x" % rnd.getrandbits(32), "object": "chat.completion", "created": 1790000000 + i, "model": "gpt-4o-mini-2024-07-18", "choices": [{"index": 0, "message": {"role": "assistant", "content": t, "refusal": None, "annotations": []}, "logprobs": None, "finish_reason": "stop"}], "usage": {"prompt_tokens": rnd.randint(5, 900), "completion_tokens": len(t)//4, "total_tokens": 1000}, "service_tier": "default", "system_fingerprint": "fp_%06x" % rnd.getrandbits(24)}, separators=(",", ":"))
    if kind == 1:
        return json.dumps({"id": "msg_%012x" % rnd.getrandbits(48), "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [{"type": "text", "text": t}], "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": rnd.randint(5, 900), "output_tokens": len(t)//4}}, separators=(",", ":"))
    if kind == 2:
        args = json.dumps({"query": para(120), "limit": rnd.randint(1, 50)})
        return json.dumps({"id": "chatcmpl-%08x" % rnd.getrandbits(32), "object": "chat.completion", "created": 1790000000 + i, "model": "gpt-4.1-2025-04-14", "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [{"id": "call_%010x" % rnd.getrandbits(40), "type": "function", "function": {"name": "search", "arguments": args}}]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130}}, separators=(",", ":"))
    return "".join("data: " + json.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1790000000, "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}]}, separators=(",", ":")) + "\n\n" for w in t.split()[:40]) + "data: [DONE]\n\n"
samples = [sample(i).encode() for i in range(2000)]
buf = b"".join(samples)
sizes = (ctypes.c_size_t * len(samples))(*[len(s) for s in samples])
out = ctypes.create_string_buffer(len(content) + 4096)
r = Z.ZDICT_finalizeDictionary(out, len(content) + 4096, content, len(content), buf, sizes, len(samples), Params(6, 0, 0x4C430002))
assert not Z.ZDICT_isError(r), r
d2 = out.raw[:r]
print("dict v2", len(d2), "bytes (content", len(content), ")")
if "--write" in sys.argv:
    open(sys.argv[sys.argv.index("--write") + 1], "wb").write(d2)
# test answers: the bytes bench's chat answers, and prose from this repo's docs (not in training)
src = open(os.path.join(ROOT, "bench/bytes_bench.py")).read()
src = src[src.index("VOCAB = ("):src.index("def f32_text")]
bb = types.SimpleNamespace()
ns = {"random": random, "json": json}
exec(src, ns)
bb.text, bb.chat_response, bb.tool_calls = ns["text"], ns["chat_response"], ns["tool_calls"]
docs = open(os.path.join(ROOT, "docs/reliability.md")).read()
prose = re.sub(r"[`*|#\[\]()]", "", docs)
tests = {}
for name, n in [("short", 700), ("2k", 2400)]:
    tests["bench-" + name] = json.dumps(bb.chat_response(name, bb.text(n, 1)), separators=(",", ":")).encode()
tests["bench-8k-tools"] = json.dumps(bb.chat_response("8k", bb.text(6000, 3), bb.tool_calls(5)), separators=(",", ":")).encode()
for name, (a, n) in {"docs-short": (1000, 600), "docs-2k": (9000, 2400), "docs-6k": (20000, 6000)}.items():
    tests[name] = json.dumps(bb.chat_response(name, prose[a:a + n]), separators=(",", ":")).encode()
cctx = Z.ZSTD_createCCtx(); dctx = Z.ZSTD_createDCtx()
def comp(data, d):
    dst = ctypes.create_string_buffer(len(data) + 1024)
    n = Z.ZSTD_compress_usingDict(cctx, dst, len(data) + 1024, data, len(data), d, len(d), 6)
    assert not Z.ZDICT_isError(n)
    return dst.raw[:n]
def dtime(frame, d, size, reps=60000):
    dd = Z.ZSTD_createDDict(d, len(d))
    dst = ctypes.create_string_buffer(size + 16)
    t = time.perf_counter()
    for _ in range(reps):
        n = Z.ZSTD_decompress_usingDDict(dctx, dst, size + 16, frame, len(frame), dd)
    el = (time.perf_counter() - t) / reps * 1e6
    assert n == size, n
    return el
for name, data in tests.items():
    f1 = comp(data, content); f2 = comp(data, d2)
    t1 = dtime(f1, content, len(data)); t2 = dtime(f2, d2, len(data))
    print(f"{name:16s} raw {len(data):6d}  v1 {len(f1):5d}  v2 {len(f2):5d} ({(len(f2)-len(f1))*100/len(f1):+.0f}%)  decode us v1 {t1:.2f} v2 {t2:.2f}")
