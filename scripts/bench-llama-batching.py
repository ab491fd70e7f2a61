#!/usr/bin/env python3
"""The llama.cpp side of the batching benchmark (`cargo bench -p joule-lab --bench batching`).

Starts `llama-server -np N` on a catalog GGUF file and measures what the Rust bench measures
for joule, with the same prompts (the same text cut to 64 tokens of the same vocabulary):
aggregate decode tokens/s and inter-token latency p50/p99 at 1, 2, 4 and 8 concurrent
streams, time to first token, and a 1,000-token prompt whose first 900 tokens were seen
before against a cold one.

    scripts/build-llama-server.sh
    scripts/bench-llama-batching.py ~/.cache/joule/models/smollm2-135m.gguf [TOKENS]

Only the standard library; the server listens on loopback.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

PROMPT_TOKENS = 64


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(port, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return json.loads(data)


def tokens(port, text, n):
    ids = post(port, "/tokenize", {"content": text, "add_special": False})["tokens"]
    return ids[:n]


def prompt_of(port, n, salt):
    words = f"stream {salt} reads: the quick brown fox jumps over the lazy dog while a small bird sings "
    return tokens(port, words * n, n)


def stream(port, prompt, n_predict, out):
    """One streamed completion: the gaps between tokens, the time to the first, the count."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "stream": True,
            "cache_prompt": True, "temperature": 0}
    start = time.perf_counter()
    c.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    times = []
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        event = json.loads(line[6:])
        if event.get("content") or event.get("tokens"):
            times.append(time.perf_counter())
        if event.get("stop"):
            break
    c.close()
    gaps = [b - a for a, b in zip(times, times[1:])]
    out.append((gaps, times[0] - start if times else float("nan"), len(times)))


def pct(v, p):
    v = sorted(v)
    return v[round((len(v) - 1) * p)]


def main():
    model = sys.argv[1]
    per_stream = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    server = os.environ.get("LLAMA_SERVER", "target/llama.cpp/bin/llama-server")
    # The CPUs this process may use (taskset, cpusets), as joule sizes its pool.
    threads = len(os.sched_getaffinity(0))
    print(f"llama-server batched decoding ({threads} threads), {per_stream} tokens per stream "
          f"after a {PROMPT_TOKENS}-token prompt: {os.path.basename(model)}")
    print(f"{'streams':>8} {'agg tok/s':>12} {'per-stream':>14} {'itl p50 ms':>10} "
          f"{'itl p99 ms':>10} {'ttft s':>10}")
    single = None
    for n in [1, 2, 4, 8]:
        port = free_port()
        proc = subprocess.Popen(
            [server, "-m", model, "-np", str(n), "-c", str(n * 2048), "-t", str(threads),
             "--port", str(port), "--host", "127.0.0.1", "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # Ready once /health answers 200 (the server logs as it loads).
            for _ in range(600):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    c.request("GET", "/health")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None:
                    sys.exit(f"llama-server exited: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
            prompts = [prompt_of(port, PROMPT_TOKENS, i) for i in range(n)]
            # One warm-up stream, as joule's load runs one.
            stream(port, prompt_of(port, 8, 99), 2, [])
            results = []
            started = time.perf_counter()
            workers = [threading.Thread(target=stream, args=(port, p, per_stream, results))
                       for p in prompts]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall = time.perf_counter() - started
            decoded = sum(r[2] for r in results)
            gaps = [g for r in results for g in r[0]]
            ttfts = [r[1] for r in results]
            agg = (decoded - n) / max(wall - max(ttfts), 1e-9)
            single = single or agg
            print(f"{n:>8} {agg:>12.1f} {agg / n:>14.1f} {pct(gaps, 0.5) * 1e3:>10.1f} "
                  f"{pct(gaps, 0.99) * 1e3:>10.1f} {pct(ttfts, 0.5):>10.3f}   "
                  f"({agg / single:.2f}x one stream)")
            if n == 1:
                shared = prompt_of(port, 900, 1000)
                cold = []
                stream(port, prompt_of(port, 900, 2000) + prompt_of(port, 100, 1), 1, cold)
                stream(port, shared + prompt_of(port, 100, 3), 1, [])
                warm = []
                stream(port, shared + prompt_of(port, 100, 4), 1, warm)
                print(f"prefix reuse, 1,000-token prompt: cold ttft {cold[0][1]:.3f} s, "
                      f"900 tokens cached {warm[0][1]:.3f} s ({cold[0][1] / warm[0][1]:.1f}x)")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
