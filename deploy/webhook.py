"""Alerts as a JSON webhook, with a ``text`` field so Slack-compatible receivers show it."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson

from deploy.notifier import Alert, NotifyError


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
        request = urllib.request.Request(
            self._url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise NotifyError(f"webhook {self._url} said {exc.code}") from exc
        except OSError as exc:
            raise NotifyError(f"cannot reach webhook {self._url}: {exc}") from exc
