"""Per-prompt rollout state (stable, canary, weight, salt, history) and sticky arm assignment."""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from flywheel.registry.errors import CorruptRegistry

BUCKETS = 10_000


class Arm(enum.StrEnum):
    STABLE = "stable"
    CANARY = "canary"


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the append-only history: who, what, when, why, and the evidence."""

    at: str
    actor: str
    action: str  # create | set | promote | rollback | advance | hold
    reason: str
    stable: str
    canary: str | None
    weight: float
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "reason": self.reason,
            "stable": self.stable,
            "canary": self.canary,
            "weight": self.weight,
        }
        if self.evidence:
            out["evidence"] = dict(self.evidence)
        return out


@dataclass(frozen=True, slots=True)
class Rollout:
    name: str
    stable: str
    canary: str | None = None
    weight: float = 0.0  # percent of keys on the canary, 0–100
    salt: str = ""
    revision: int = 0  # bumped by every change; the compare-and-swap token
    history: tuple[Change, ...] = ()

    @property
    def threshold(self) -> int:
        """Buckets below this many (of 10,000) are canary."""
        return round(self.weight * BUCKETS / 100) if self.canary else 0

    def changed(
        self,
        *,
        action: str,
        actor: str,
        reason: str,
        stable: str | None = None,
        canary: str | None = None,
        weight: float = 0.0,
        evidence: Mapping[str, Any] | None = None,
    ) -> Rollout:
        """The next state, with the change appended to the history."""
        stable = stable or self.stable
        weight = weight if canary else 0.0
        entry = Change(now(), actor, action, reason, stable, canary, weight, evidence or {})
        return replace(
            self,
            stable=stable,
            canary=canary,
            weight=weight,
            revision=self.revision + 1,
            history=(*self.history, entry),
        )

    def previous_stable(self) -> str | None:
        """The stable version before the current one, from the history."""
        for change in reversed(self.history):
            if change.stable != self.stable:
                return change.stable
        return None

    def to_json(self) -> bytes:
        record = {
            "name": self.name,
            "stable": self.stable,
            "canary": self.canary,
            "weight": self.weight,
            "salt": self.salt,
            "revision": self.revision,
            "history": [c.to_dict() for c in self.history],
        }
        return orjson.dumps(record, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Rollout:
        try:
            record = orjson.loads(data)
            rollout = cls(
                name=str(record["name"]),
                stable=str(record["stable"]),
                canary=record.get("canary"),
                weight=float(record.get("weight", 0)),
                salt=str(record["salt"]),
                revision=int(record["revision"]),
                history=tuple(Change(**{**c, "weight": float(c["weight"])}) for c in record.get("history", ())),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptRegistry(f"{where}: {exc}") from exc
        if not 0 <= rollout.weight <= 100:
            raise CorruptRegistry(f"{where}: weight {rollout.weight} is outside 0–100")
        return rollout


def new_rollout(name: str, stable: str, actor: str, reason: str) -> Rollout:
    return Rollout(name=name, stable=stable, salt=secrets.token_hex(8)).changed(
        action="create", actor=actor, reason=reason, stable=stable
    )


def bucket_of(salt: str, canary: str | None, key: str) -> int:
    """Sticky bucket 0–9,999 of a key. The canary hash is mixed in so each new canary
    gets a fresh population, while weight changes within one canary move only the
    keys that must move (a bucket below 10 % is below 25 % too)."""
    digest = hashlib.blake2b(f"{salt}\x00{canary or ''}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def assign_arm(rollout: Rollout, key: str) -> Arm:
    threshold = rollout.threshold
    if threshold <= 0:
        return Arm.STABLE
    return Arm.CANARY if bucket_of(rollout.salt, rollout.canary, key) < threshold else Arm.STABLE


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
