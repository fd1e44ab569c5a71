"""Alerts as a JSON webhook, with a ``text`` field so Slack-compatible receivers show it."""

from __future__ import annotations

from deploy.notifier import Alert, post_json


class WebhookNotifier:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._url = url
        self._timeout = timeout

    def send(self, alert: Alert) -> None:
        state = "resolved" if alert.resolved else alert.severity
        body = {
            "text": f"[flywheel {state}] {alert.prompt} {alert.version}: {alert.reason}",
            "alert": alert.name,
            "prompt": alert.prompt,
            "version": alert.version,
            "reason": alert.reason,
            "severity": alert.severity,
            "resolved": alert.resolved,
        }
        post_json(self._url, body, self._timeout, "the webhook")
