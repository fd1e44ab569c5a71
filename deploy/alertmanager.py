"""Alerts to Prometheus Alertmanager through its API v2 (``POST /api/v2/alerts``)."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime

import orjson

from deploy.notifier import Alert, NotifyError


class AlertmanagerNotifier:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self._url = base_url.rstrip("/") + "/api/v2/alerts"
        self._timeout = timeout

    def send(self, alert: Alert) -> None:
        now = datetime.now(UTC).isoformat()
        payload = [
            {
                "labels": {
                    "alertname": alert.name,
                    "prompt": alert.prompt,
                    "version": alert.version,
                    "severity": alert.severity,
                    "reason": alert.cause,
                    "service": "flywheel",
                },
                "annotations": {"reason": alert.reason, "summary": f"{alert.prompt}: {alert.reason}"},
                "startsAt": now,
                **({"endsAt": now} if alert.resolved else {}),  # an end time now resolves it
            }
        ]
        request = urllib.request.Request(
            self._url, data=orjson.dumps(payload), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise NotifyError(f"Alertmanager said {exc.code}: {exc.read(300).decode(errors='replace')}") from exc
        except OSError as exc:
            raise NotifyError(f"cannot reach Alertmanager at {self._url}: {exc}") from exc
