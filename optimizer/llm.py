"""Model calls for the optimizer: litellm (any provider), loaded on first use, behind a
call budget (``--max-calls``), a concurrency limit, and backoff on 429."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


class BudgetExhausted(RuntimeError):
    pass


class ModelError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    api_base: str | None = None
    api_key: str | None = None

    def litellm_name(self) -> str:
        # An OpenAI-compatible endpoint (--api-base) serves bare model names.
        return f"openai/{self.name}" if self.api_base and "/" not in self.name else self.name


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int


class LLM:
    def __init__(self, max_calls: int, concurrency: int = 4, retries: int = 5, backoff: float = 0.5) -> None:
        self.max_calls = max_calls
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self._limit = asyncio.Semaphore(concurrency)
        self._retries = retries
        self._backoff = backoff
        self._litellm: Any = None

    @property
    def remaining(self) -> int:
        return self.max_calls - self.calls

    async def complete(
        self, model: Model, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any] | None = None
    ) -> Completion:
        litellm = await self._module()
        kwargs: dict[str, Any] = {**(params or {}), "model": model.litellm_name(), "messages": list(messages)}
        kwargs["max_retries"] = 0  # retries are ours, so that every HTTP call counts against --max-calls
        kwargs["_skip_mcp_handler"] = True  # a replay's tools go to the model (litellm's MCP gateway needs `mcp`)
        if model.api_base:
            kwargs["api_base"] = model.api_base
        if model.api_key:
            kwargs["api_key"] = model.api_key
        async with self._limit:
            for attempt in range(self._retries + 1):
                if self.calls >= self.max_calls:
                    raise BudgetExhausted(f"--max-calls {self.max_calls} reached")
                self.calls += 1
                try:
                    result = await litellm.acompletion(**kwargs)
                except litellm.RateLimitError:
                    if attempt == self._retries:
                        raise ModelError(f"{model.name}: still rate limited after {self._retries} retries") from None
                    await asyncio.sleep(self._backoff * 2**attempt)
                    continue
                except Exception as exc:  # litellm's exception tree, translated once here
                    raise ModelError(f"{model.name}: {type(exc).__name__}: {exc}") from exc
                usage = getattr(result, "usage", None)
                inputs = getattr(usage, "prompt_tokens", 0) or 0
                outputs = getattr(usage, "completion_tokens", 0) or 0
                self.input_tokens += inputs
                self.output_tokens += outputs
                return Completion(_answer_text(result.choices[0].message), inputs, outputs)
        raise AssertionError("unreachable")

    async def _module(self) -> Any:
        if self._litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network for the price map
            self._litellm = await asyncio.to_thread(importlib.import_module, "litellm")
            self._litellm.suppress_debug_info = True
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
                logging.getLogger(name).setLevel(logging.WARNING)  # a line per call otherwise
            self._litellm.telemetry = False
        return self._litellm


def _answer_text(message: Any) -> str:
    """The answer's text; an answer that only calls tools is those calls as JSON
    (``[{"name", "arguments"}]``), so that expectations and the judge see what the model did."""
    if message.content:
        return str(message.content)
    calls = [
        {"name": call.function.name, "arguments": call.function.arguments}
        for call in getattr(message, "tool_calls", None) or ()
        if getattr(call, "function", None) is not None
    ]
    return orjson.dumps(calls).decode() if calls else ""
