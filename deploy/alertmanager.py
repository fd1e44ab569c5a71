"""Alerts to Prometheus Alertmanager through its API v2 (``POST /api/v2/alerts``)."""

from __future__ import annotations

from datetime import UTC, datetime

from deploy.notifier import Alert, post_json


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
        post_json(self._url, payload, self._timeout, "Alertmanager")
