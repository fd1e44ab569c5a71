"""``POST /v1/feedback`` (SPEC §4): a thumbs or score for an earlier call, by request id.

It becomes a ``gen_ai.evaluation.result`` named ``user_feedback``, parented to the
call's span when this proxy served the call (same trace), and always carrying the
request id so the optimizer can join it to the call from any replica.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiohttp import web

from proxy.errors import InvalidRequest
from proxy.wire import parse_object

_FIELDS = frozenset(("request_id", "score", "thumbs", "comment", "correction"))
_MAX_TEXT = 10_000


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    score: float  # 0..1; thumbs up = 1, down = 0
    label: str | None  # "up" | "down" for thumbs
    comment: str | None
    correction: str | None

    @property
    def kind(self) -> str:
        return self.label or "score"


def parse_feedback(raw: bytes) -> Feedback:
    body = parse_object(raw)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}.", param=unknown[0]
        )
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > 128:
        raise InvalidRequest("`request_id` must be the X-Request-Id of an earlier call.", param="request_id")
    score, thumbs = body.get("score"), body.get("thumbs")
    if score is None and thumbs is None:
        raise InvalidRequest('Give `score` (0..1) or `thumbs` ("up" or "down").', param="score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1):
        raise InvalidRequest("`score` must be a number from 0 to 1.", param="score")
    if thumbs is not None and thumbs not in ("up", "down"):
        raise InvalidRequest('`thumbs` must be "up" or "down".', param="thumbs")
    for name in ("comment", "correction"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_TEXT):
            raise InvalidRequest(f"`{name}` must be a string of at most {_MAX_TEXT} characters.", param=name)
    value = float(score) if score is not None else (1.0 if thumbs == "up" else 0.0)
    return Feedback(request_id, value, thumbs, body.get("comment"), body.get("correction"))


def accepted(feedback: Feedback) -> web.Response:
    body = orjson.dumps({"status": "accepted", "request_id": feedback.request_id})
    return web.Response(status=202, body=body, content_type="application/json")
