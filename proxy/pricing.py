"""Cost in USD per call, from litellm's price table — read as JSON from the installed
package, never by importing litellm (that costs ~6 s and ~180 MB)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger("flywheel.proxy")

_TABLE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class Price:
    input_per_token: float
    output_per_token: float
    cache_read_per_token: float | None = None  # input tokens served from the prompt cache (None: as input)
    cache_creation_per_token: float | None = None  # input tokens written to it (None: as input)


class PriceTable:
    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = prices

    @classmethod
    def from_litellm(cls) -> PriceTable:
        """litellm's shipped table; empty (costs unknown) if litellm is not installed."""
        spec = importlib.util.find_spec("litellm")  # locates the package without running it
        if spec is None or spec.origin is None:
            log.warning("litellm is not installed: request costs will not be recorded")
            return cls({})
        return cls.from_file(Path(spec.origin).parent / _TABLE)

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        try:
            raw = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("cannot read the price table %s (%s): request costs will not be recorded", path, exc)
            return cls({})
        prices = {}
        for model, entry in raw.items():
            if not isinstance(entry, dict):
                continue
            given_in, given_out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
            if isinstance(given_in, int | float) or isinstance(given_out, int | float):
                read, written = entry.get("cache_read_input_token_cost"), entry.get("cache_creation_input_token_cost")
                prices[model] = Price(
                    float(given_in or 0),
                    float(given_out or 0),
                    float(read) if isinstance(read, int | float) else None,
                    float(written) if isinstance(written, int | float) else None,
                )
        return cls(prices)

    def cost(
        self,
        models: tuple[str | None, ...],
        input_tokens: int | None,
        output_tokens: int | None,
        cached_input_tokens: int | None = None,
        cache_creation_input_tokens: int | None = None,
    ) -> float | None:
        """The first of ``models`` the table knows (the response's model, then the request's),
        tried as given and without a ``provider/`` prefix. Input tokens read from the prompt
        cache and written to it (part of the input tokens, as OpenAI and litellm count them)
        at the table's cache-read and cache-write prices, where it has them."""
        if input_tokens is None and output_tokens is None:
            return None
        for model in models:
            if not model:
                continue
            price = self._prices.get(model) or self._prices.get(model.partition("/")[2])
            if price is not None:
                cost = (input_tokens or 0) * price.input_per_token + (output_tokens or 0) * price.output_per_token
                if cached_input_tokens or cache_creation_input_tokens:
                    cost += _cache_adjustment(
                        price, input_tokens or 0, cached_input_tokens, cache_creation_input_tokens
                    )
                return cost
        return None

    def __len__(self) -> int:
        return len(self._prices)


def _cache_adjustment(price: Price, input_tokens: int, read: int | None, written: int | None) -> float:
    """What cache reads and writes cost beyond (or short of) the plain input price."""
    adjustment, rest = 0.0, input_tokens
    for tokens, per_token in ((read, price.cache_read_per_token), (written, price.cache_creation_per_token)):
        if tokens and per_token is not None:
            counted = min(tokens, rest)
            rest -= counted
            adjustment += counted * (per_token - price.input_per_token)
    return adjustment
