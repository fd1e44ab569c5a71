"""Where a request goes: chosen from config by the request's model, never by a request field URL.

``--upstreams FILE`` is LiteLLM's ``model_list`` in TOML or JSON::

    [[model_list]]
    model_name = "claude"                       # what the app sends as "model"
    [model_list.litellm_params]
    model = "anthropic/claude-sonnet-4-5"       # provider/model, as litellm names it
    api_key = "os.environ/ANTHROPIC_API_KEY"    # read from the environment at start-up
    api_base = "https://api.anthropic.com"      # optional

``openai/…`` models (and models with no provider prefix) are OpenAI-compatible and
are forwarded byte for byte; every other provider goes through litellm.
A ``model_name`` ending in ``*`` matches by prefix (``"claude-*"``; the longest
prefix wins; ``"*"`` catches any model not listed), and a ``provider/*`` model
serves the model the app asked for.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from yarl import URL

from proxy.errors import ModelNotFound

OPENAI_BASE = "https://api.openai.com/v1"
_ENV_REF = "os.environ/"


@dataclass(frozen=True, slots=True)
class OpenAIUpstream:
    """An OpenAI-compatible base URL (OpenAI, vLLM, Ollama, Azure…), forwarded to as is."""

    base_url: str  # no trailing slash; the request path after /v1 is appended
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None  # the upstream's model name when the model list renames it; None keeps the app's


@dataclass(frozen=True, slots=True)
class LiteLLMUpstream:
    """A non-OpenAI provider (Anthropic, Bedrock, Gemini…), translated by litellm."""

    model: str  # litellm's "provider/model"; "provider/*" serves whatever model the app asked for
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)  # api_key, api_base, …

    def model_for(self, requested: str | None) -> str:
        provider, _, name = self.model.partition("/")
        return f"{provider}/{requested}" if name == "*" and requested else self.model


Upstream = OpenAIUpstream | LiteLLMUpstream


@dataclass(frozen=True, slots=True)
class Upstreams:
    default: OpenAIUpstream | None = None
    by_model: Mapping[str, Upstream] = field(default_factory=dict)

    _wildcards: tuple[tuple[str, Upstream], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        found = [(name[:-1], up) for name, up in self.by_model.items() if name.endswith("*")]
        object.__setattr__(self, "_wildcards", tuple(sorted(found, key=lambda item: -len(item[0]))))

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.by_model)

    def for_model(self, model: str | None) -> Upstream:
        """The upstream serving ``model``; requests without a model use the default."""
        if model is not None:
            chosen = self.by_model.get(model)
            if chosen is not None:
                return chosen
            for prefix, upstream in self._wildcards:
                if model.startswith(prefix):
                    return upstream
        if self.default is not None:
            return self.default
        if model is None:
            raise ModelNotFound("This request names no model and the proxy has no default --upstream.")
        raise ModelNotFound(f"The model `{model}` is not configured in this proxy.", param="model")

    def listed_models(self) -> bytes:
        """``GET /v1/models`` answered from the model list, for a proxy with no default upstream."""
        names = [name for name in self.by_model if not name.endswith("*")]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "flywheel"} for name in names]
        return orjson.dumps({"object": "list", "data": data})


def load_upstreams(
    path: Path | None,
    *,
    default: URL | None,
    api_key: str | None,
    environ: Mapping[str, str],
) -> Upstreams:
    """Read the model list (start-up only) and add the ``--upstream`` default."""
    base = OpenAIUpstream(str(default).rstrip("/"), api_key) if default is not None else None
    if path is None:
        return Upstreams(default=base)
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    entries = raw.get("model_list") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError("expected a non-empty `model_list` array")
    by_model: dict[str, Upstream] = {}
    for index, entry in enumerate(entries):
        name, upstream = _entry(index, entry, environ)
        if name in by_model:
            raise ValueError(f"model_list[{index}]: model_name {name!r} is listed twice")
        by_model[name] = upstream
    return Upstreams(default=base, by_model=by_model)


def _entry(index: int, entry: Any, environ: Mapping[str, str]) -> tuple[str, Upstream]:
    where = f"model_list[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
        raise ValueError(f"{where}: needs a string `model_name`")
    params = entry.get("litellm_params")
    if not isinstance(params, dict) or not isinstance(params.get("model"), str):
        raise ValueError(f"{where}: needs `litellm_params.model` such as 'anthropic/claude-sonnet-4-5'")
    resolved = {key: _resolve(f"{where}.{key}", value, environ) for key, value in params.items()}
    model: str = resolved.pop("model")
    provider, _, bare = model.partition("/")
    if not bare:  # no provider prefix: OpenAI-compatible, like litellm assumes
        provider, bare = "openai", model
    if provider == "openai":
        api_base = resolved.pop("api_base", None) or OPENAI_BASE
        url = URL(str(api_base))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{where}: api_base must be an http(s) URL")
        renamed = None if bare == "*" else bare
        return entry["model_name"], OpenAIUpstream(str(url).rstrip("/"), resolved.pop("api_key", None), renamed)
    return entry["model_name"], LiteLLMUpstream(model, resolved)


def _resolve(where: str, value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith(_ENV_REF):
        name = value[len(_ENV_REF) :]
        if name not in environ:
            raise ValueError(f"{where}: environment variable {name} is not set")
        return environ[name]
    return value
