"""Telling people: one small interface; Alertmanager and webhook implementations beside it."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson


@dataclass(frozen=True, slots=True)
class Alert:
    name: str  # FlywheelCanaryRollback | FlywheelStableDegraded
    prompt: str
    version: str
    reason: str
    severity: str = "warning"
    resolved: bool = False

    @property
    def cause(self) -> str:
        """The metrics named in the reason, for a bounded ``reason`` label ("schema_valid,p95_latency_s")."""
        found = [m for m in METRICS if m in self.reason]
        return ",".join(found) or "other"


METRICS = ("error_free", "schema_valid", "feedback_positive", "p95_latency_s", "cost_per_request")


class Notifier(Protocol):
    def send(self, alert: Alert) -> None:
        """Deliver or raise ``NotifyError``; the controller logs and counts failures."""
        ...


class NotifyError(RuntimeError):
    pass


class Fanout:
    """Every configured notifier (none configured: nobody is told, and that is allowed)."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = tuple(notifiers)

    def send(self, alert: Alert) -> list[str]:
        """Sends to all; returns the failures, one line each."""
        failures = []
        for notifier in self.notifiers:
            try:
                notifier.send(alert)
            except NotifyError as exc:
                failures.append(str(exc))
        return failures


def post_json(url: str, body: object, timeout: float, what: str) -> None:
    """POST ``body`` as JSON; failures become one ``NotifyError`` line naming ``what``."""
    request = urllib.request.Request(
        url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise NotifyError(f"{what} said {exc.code}: {exc.read(300).decode(errors='replace')}") from exc
    except OSError as exc:
        raise NotifyError(f"cannot reach {what} at {url}: {exc}") from exc
