"""Cost of the managed-prompt step on the request path, in microseconds per request.

Times ``apply_prompt`` (selection, sticky assignment, rendering, injection) on an
in-memory :class:`PromptBook` built from a real registry with ``--prompts`` prompts,
next to the JSON parse and re-serialization every rewritten request pays anyway.

    python -m bench.prompt_bench
"""

from __future__ import annotations

import argparse
import json
import tempfile
import timeit
from pathlib import Path

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from flywheel.registry import open_registry
from flywheel.registry.version import content_from_mapping
from proxy.prompts import ActivePrompt, PromptBook, apply_prompt
from proxy.wire import Call

SYSTEM = "You are the support assistant of Acme. Answer briefly. " * 20  # ~1 KB system prompt


def book_with(prompts: int, root: Path) -> PromptBook:
    registry = open_registry(root)
    for i in range(prompts):
        name = f"p{i}"
        stable, _ = registry.push(name, content_from_mapping({"template": f"{SYSTEM}#{i}"}))
        canary, _ = registry.push(name, content_from_mapping({"template": f"{SYSTEM}#{i} v2", "params": {"seed": 1}}))
        registry.set_rollout(name, stable=stable.hash, canary=canary.hash, weight=50)
    active = {}
    versions = {}
    for name in registry.names():
        rollout = registry.rollout(name)
        found = registry.versions(name)
        by_hash = {v.hash: v for v in found}
        active[name] = ActivePrompt(rollout, by_hash[rollout.stable], by_hash[rollout.canary or rollout.stable])
        versions[name] = found
    return PromptBook.build(active, versions)


def request(prompts: int) -> bytes:
    messages = [
        {"role": "system", "content": f"{SYSTEM}#{prompts // 2}"},
        {"role": "user", "content": "Where is my order?"},
    ]
    return orjson.dumps({"model": "gpt-4o-mini", "messages": messages, "user": "customer-42"})


def measure(prompts: int, number: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        book = book_with(prompts, Path(root))
    raw = request(prompts)
    headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())

    def call() -> Call:
        body = orjson.loads(raw)
        return Call(
            "req_1", "POST", "chat/completions", "/chat/completions", CIMultiDict(), raw, body, body["model"], False
        )

    def parse_only() -> None:
        call().payload()

    def with_prompt() -> None:
        c = call()
        assert apply_prompt(book, c, headers) is not None
        c.payload()

    base = min(timeit.repeat(parse_only, number=number, repeat=5)) / number * 1e6
    full = min(timeit.repeat(with_prompt, number=number, repeat=5)) / number * 1e6
    return {"prompts": prompts, "parse_serialize_us": base, "with_prompt_us": full, "prompt_step_us": full - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    rows = [measure(n, args.number) for n in (1, 100, 1000)]
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
