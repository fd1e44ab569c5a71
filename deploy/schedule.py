"""Where a canary goes next: the step weights, as pure functions (Flagger's scheduler)."""

from __future__ import annotations

import enum
from collections.abc import Sequence

DEFAULT_STEPS = (5.0, 10.0, 25.0, 50.0, 100.0)


class Action(enum.StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


def next_weight(current: float, steps: Sequence[float] = DEFAULT_STEPS) -> float | None:
    """The next step above ``current``; None when the canary is at (or past) the last step."""
    for weight in steps:
        if weight > current + 1e-9:
            return weight
    return None


def parse_steps(text: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise ValueError(f"--steps {text!r}: expected weights like 5,10,25,50,100") from exc
    if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"--steps {text!r}: weights must rise strictly within (0, 100]")
    return steps
