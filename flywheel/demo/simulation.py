"""The demo's SIMULATED provider: an OpenAI-compatible server on loopback whose "models"
follow the instructions they recognise, so a prompt change really changes outcomes.

It is not a language model and says so everywhere: every answer carries
``system_fingerprint: "flywheel-simulation"`` and the header ``X-Flywheel-Simulation``.

The task: triage a support ticket into ``{"category": billing|shipping|account,
"urgent": bool}``. What the simulated triage model does depends on the system prompt:

- "JSON" in it: answers a JSON object (97 % of tickets); otherwise JSON only for
  60 % of tickets and a friendly sentence for the rest (schema-invalid).
- a rule about urgency (it mentions "urgent" and "true"): flags urgent tickets;
  otherwise ``urgent`` is always false.
- "friendly sentence" in it: answers in a sentence (90 % of tickets).

The simulated optimizer model reads the failures in flywheel's meta-prompt and adds
the instruction those failures call for. Choices are a hash of the ticket and the
prompt, so the same call always gets the same answer (the gate's replays agree).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

FINGERPRINT = "flywheel-simulation"
TASK_MODEL = "simulated-triage-model"
OPTIMIZER_MODEL = "simulated-optimizer-model"
CATEGORIES = ("billing", "shipping", "account")
KEYWORDS = {
    "billing": ("charged", "invoice", "refund", "card", "payment"),
    "shipping": ("parcel", "delivery", "package", "tracking", "courier"),
    "account": ("password", "login", "email address", "two-factor", "profile"),
}
URGENT_WORDS = ("urgent", "asap", "immediately", "right now")
JSON_RULE = 'Respond only with a JSON object: {"category": "billing" | "shipping" | "account", "urgent": true | false}.'
URGENT_RULE = "Set urgent to true when the customer asks for speed (urgent, ASAP, immediately, right now)."


def _chance(*parts: str) -> float:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def triage(system: str, ticket: str) -> str:
    """What the simulated triage model answers to ``ticket`` under ``system``."""
    lowered_system, lowered = system.lower(), ticket.lower()
    category = next((c for c, words in KEYWORDS.items() if any(w in lowered for w in words)), "account")
    follows_urgency = "urgent" in lowered_system and "true" in lowered_system
    urgent = follows_urgency and any(w in lowered for w in URGENT_WORDS)
    roll = _chance(system, ticket)
    if "friendly sentence" in lowered_system and roll < 0.9:
        return f"Thanks for reaching out! This looks like a {category} question and we are on it."
    if "json" in lowered_system and roll < 0.97 or "json" not in lowered_system and roll < 0.6:
        return orjson.dumps({"category": category, "urgent": urgent}).decode()
    return f"This ticket is about {category}." + (" It seems urgent." if urgent else "")


def improve(meta_prompt: str) -> dict[str, str]:
    """The simulated optimizer: the current prompt plus the rules its failures call for."""
    current = meta_prompt.split("# Current prompt\n", 1)[1].split("\n# Failures", 1)[0].strip()
    failures = meta_prompt.split("# Failures", 1)[-1].lower()
    added, why = [], []
    if ("json" in failures or "schema" in failures) and "json" not in current.lower():
        added.append(JSON_RULE)
        why.append("answers were not JSON")
    if "urgent" in failures and URGENT_RULE.lower() not in current.lower():
        added.append(URGENT_RULE)
        why.append("urgent tickets were not flagged")
    prompt = " ".join([current, *added])
    return {"rationale": "; ".join(why) or "no pattern recognised", "prompt": prompt}


class SimulatedProvider:
    """``POST /v1/chat/completions`` for the two simulated models, on a loopback port."""

    def __init__(self) -> None:
        self.calls = 0
        self.url = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SimulatedProvider]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        async with on_loopback(app) as base_url:
            self.url = base_url + "/v1"
            yield self

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        try:
            body = orjson.loads(await request.read())
            messages = body["messages"]
            system = next((str(m.get("content")) for m in messages if m.get("role") == "system"), "")
            user = str(messages[-1].get("content"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError):
            error = {"error": {"message": "simulation: bad request", "type": "invalid_request_error"}}
            return web.json_response(error, status=400, headers={"X-Flywheel-Simulation": "true"})
        if system.startswith("You improve system prompts"):
            content = orjson.dumps(improve(user)).decode()
        elif system.startswith("You grade answers"):
            content = orjson.dumps({"pass": _looks_like_json(user), "reason": "simulated judge"}).decode()
        else:
            content = triage(system, user)
        answer = _completion(body, content)
        if body.get("stream"):
            return await _stream(request, answer)
        return web.Response(
            body=orjson.dumps(answer), content_type="application/json", headers={"X-Flywheel-Simulation": "true"}
        )


@contextlib.asynccontextmanager
async def on_loopback(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port until the block ends; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _looks_like_json(text: str) -> bool:
    match = re.search(r"Answer to grade: (.*)$", text, re.S)
    try:
        return isinstance(orjson.loads(match.group(1) if match else text), dict)
    except orjson.JSONDecodeError:
        return False


def _completion(body: dict[str, Any], content: str) -> dict[str, Any]:
    words = len(content.split())
    return {
        "id": f"chatcmpl-sim-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model") or TASK_MODEL),
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 60, "completion_tokens": words, "total_tokens": 60 + words},
    }


async def _stream(request: web.Request, answer: dict[str, Any]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Flywheel-Simulation": "true"})
    await response.prepare(request)
    base = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")} | {
        "object": "chat.completion.chunk"
    }
    text = answer["choices"][0]["message"]["content"]
    for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
        chunk = base | {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    done = base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": answer["usage"]}
    await response.write(b"data: " + orjson.dumps(done) + b"\n\ndata: [DONE]\n\n")
    await response.write_eof()
    return response
