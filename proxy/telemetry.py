"""One CLIENT span and one set of metrics per proxied GenAI call (SPEC §5), and feedback.

A :class:`CallTrace` is opened when the request is read and finished after the answer
has been sent, so the span's attributes, the schema check and the metrics never delay
the app. The app's ``traceparent`` is the span's parent; the span is the provider's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from multidict import CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from proxy import semconv as sc
from proxy.content import ContentRecorder
from proxy.feedback import Feedback
from proxy.masking import MASK, mask_credentials
from proxy.metrics import ProxyMetrics
from proxy.observation import Outcome
from proxy.pricing import PriceTable
from proxy.prompts import Applied
from proxy.propagation import TraceHeaders
from proxy.recent_calls import RecentCalls, Served
from proxy.schema_check import SchemaChecks
from proxy.span_attributes import add_request_attributes, add_response_attributes, upstream_attributes
from proxy.tracing import SCOPE, CallSpans, OpenSpan, Tracing
from proxy.upstreams import Upstream
from proxy.wire import Call

log = logging.getLogger("flywheel.proxy")

OPERATIONS = {
    "chat/completions": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
UPSTREAM_FAULTS = frozenset(("upstream_unreachable", "upstream_timeout", "upstream_cut_off"))
_MODEL_NAMES_KEPT = 1024  # model names whose check is remembered (labels stop at 200 anyway)


class Telemetry:
    def __init__(
        self,
        tracing: Tracing,
        metrics: ProxyMetrics,
        prices: PriceTable,
        content: ContentRecorder,
        recent: RecentCalls | None = None,
        trace_headers: TraceHeaders | None = None,
    ) -> None:
        self.provider = tracing.provider
        self.call_spans = CallSpans(tracing)
        self.metrics = metrics
        self.prices = prices
        self.content = content
        self._tracer = tracing.provider.get_tracer(SCOPE.name)  # feedback spans: few, through the SDK's Span
        self._trace_headers = trace_headers if trace_headers is not None else TraceHeaders()
        self._recent = recent if recent is not None else RecentCalls()
        self.schemas = SchemaChecks()
        self._upstreams: dict[int, dict[str, Any]] = {}  # upstreams live as long as the config
        self._model_names: dict[str, str] = {}
        self._finished: list[CallTrace] = []

    def begin(self, call: Call, headers: CIMultiDictProxy[str], started: float) -> CallTrace | None:
        """Open the call's span (GenAI endpoints only) and pass its context upstream."""
        operation = OPERATIONS.get(call.endpoint)
        if operation is None or call.body is None:
            return None
        span: OpenSpan | None = None
        model = self.model_name(call.model)  # as recorded: checked once a call
        if self.call_spans.enabled:
            parent = self._trace_headers.extract(headers)
            name = f"{operation} {model}".rstrip()
            span = self.call_spans.start(parent, name, time.time_ns() - int((time.perf_counter() - started) * 1e9))
            self._trace_headers.inject(span.context, call.headers)
        call.outcome = Outcome(call.endpoint, keep_text=self.content.enabled)
        self.metrics.in_flight += 1
        credential = bearer_token(headers) if self.content.enabled else None  # masked in captured content
        return CallTrace(self, call, span, operation, model, started, credential)

    def model_name(self, model: str | None) -> str:
        """The request's model as spans and metric labels show it. An app that sends a key
        as its model (arguments swapped) must not put it on /metrics and into traces."""
        if not model:
            return ""
        found = self._model_names.get(model)
        if found is None:
            found = model if mask_credentials(model) == model else MASK
            if len(self._model_names) < _MODEL_NAMES_KEPT:
                self._model_names[model] = found
        return found

    def upstream_attributes(self, upstream: Upstream) -> dict[str, Any]:
        """Provider and server attributes, worked out once per configured upstream."""
        found = self._upstreams.get(id(upstream))
        if found is None:
            found = self._upstreams[id(upstream)] = upstream_attributes(upstream)
        return found

    def finished(self, traced: CallTrace) -> None:
        """Record a call whose answer is out — together with the others answered in the
        same pass of the event loop, on its next pass. Their spans, metrics and
        bookkeeping then run back to back while that code and its data are still in the
        CPU's caches: 1–8 % less proxy CPU a call under load in four paired runs,
        against recording each call on its own."""
        if not self._finished:
            try:
                asyncio.get_running_loop().call_soon(self.record_finished)
            except RuntimeError:  # no event loop: record now
                traced.record()
                return
        self._finished.append(traced)

    def record_finished(self) -> None:
        finished, self._finished = self._finished, []
        for traced in finished:
            try:
                traced.record()
            except Exception:  # one bad call must not lose the others' spans and metrics
                log.exception("recording the telemetry of call %s failed", traced.request_id)

    def remember(self, request_id: str, served: Served) -> None:
        self._recent.remember(request_id, served)

    def served(self, request_id: str) -> Served | None:
        self.record_finished()  # a call answered a moment ago is known
        return self._recent.get(request_id)

    def record_feedback(self, feedback: Feedback, credential: str | None = None) -> None:
        """A ``gen_ai.evaluation.result`` span in the call's trace (when this proxy served it)."""
        served = self.served(feedback.request_id)
        attributes: dict[str, Any] = {
            sc.EVALUATION_NAME: "user_feedback",
            sc.EVALUATION_SCORE_VALUE: feedback.score,
            sc.REQUEST_ID: feedback.request_id,
        }
        if feedback.label is not None:
            attributes[sc.EVALUATION_SCORE_LABEL] = feedback.label
        if feedback.comment:
            attributes[sc.EVALUATION_EXPLANATION] = self.content.clean_comment(feedback.comment, credential)
        if feedback.correction and self.content.enabled:
            attributes[sc.FEEDBACK_CORRECTION] = self.content.clean(feedback.correction, credential)
        parent = None
        links = []
        if served is not None:
            attributes |= {sc.PROMPT_NAME: served.prompt, sc.PROMPT_VERSION: served.version, sc.PROMPT_ARM: served.arm}
            if served.response_id:
                attributes[sc.RESPONSE_ID] = served.response_id
            parent = trace.set_span_in_context(trace.NonRecordingSpan(served.context))
            links = [trace.Link(served.context)]
        span = self._tracer.start_span(
            sc.EVALUATION_RESULT, context=parent, kind=SpanKind.INTERNAL, attributes=attributes, links=links
        )
        span.end()
        labels = (served.prompt, served.version, served.arm) if served else ("", "", "")
        self.metrics.feedback.labels(*labels, feedback.kind).inc()
        self.metrics.feedback_score.labels(*labels).observe(feedback.score)

    async def close(self) -> None:
        """Record the calls answered during the drain and those whose schema check runs."""
        self.record_finished()
        await self.schemas.close()


class CallTrace:
    """The span and labels of one call, finished once the answer is out."""

    def __init__(
        self,
        telemetry: Telemetry,
        call: Call,
        span: OpenSpan | None,
        operation: str,
        model: str,
        started: float,
        credential: str | None,
    ) -> None:
        self._t = telemetry
        self._call = call
        self._span = span
        self._operation = operation
        self._started = started
        self._credential = credential
        self._applied: Applied | None = None
        self._status: int | None = None
        self._error: str | None = None
        self._ended = started
        self._model = model  # the request's model as spans and labels show it
        self._name = f"{operation} {model}".rstrip()
        # The span's attributes, all set at the end.
        self._attributes: dict[str, Any] = {
            sc.OPERATION_NAME: operation,
            sc.REQUEST_ID: call.request_id,
            sc.REQUEST_STREAM: call.stream,
        }

    def prompt_applied(self, applied: Applied | None) -> None:
        self._applied = applied
        if applied is not None and applied.version.content.response_schema is not None:
            assert self._call.outcome is not None
            self._call.outcome.keep_text = True  # the schema check reads the output
        if applied is not None:
            self._attributes[sc.PROMPT_NAME] = applied.name
            self._attributes[sc.PROMPT_VERSION] = applied.version.hash
            self._attributes[sc.PROMPT_ARM] = applied.arm.value

    def routed(self, upstream: Upstream) -> None:
        call = self._call
        self._model = self._t.model_name(call.model)  # a prompt version may have set it
        if call.model:
            self._name = f"{self._operation} {self._model}"
        self._attributes.update(self._t.upstream_attributes(upstream))

    def failed(self, status: int, error_type: str) -> None:
        """flywheel answered with its own error (bad input, upstream unreachable …)."""
        self._status, self._error = status, error_type

    def cancelled(self) -> None:
        """The app went away. Once the answer's end ([DONE], a terminal event) had gone out
        to it, that is no failure: an app that stops reading there hangs up before the
        response's last bytes, and the call must not count as cancelled in the metrics
        and spans the canary judges by."""
        outcome = self._call.outcome
        if outcome is None or not outcome.delivered:
            self.failed(499, "cancelled")

    @property
    def request_id(self) -> str:
        return self._call.request_id

    def finish(self) -> None:
        """The answer is out (or the call failed): recorded on the loop's next pass."""
        self._ended = time.perf_counter()
        self._t.metrics.in_flight -= 1
        self._t.finished(self)

    def record(self) -> None:
        """The call's metrics, span and entry in the recent calls (for feedback)."""
        call, outcome, span, t = self._call, self._call.outcome, self._span, self._t
        assert outcome is not None
        status = self._status or outcome.status
        error = self._error or outcome.error_type or (str(status) if status is not None and status >= 400 else None)
        cost = t.prices.cost(
            (outcome.response_model, call.model),
            outcome.input_tokens,
            outcome.output_tokens,
            outcome.cached_input_tokens,
            outcome.cache_creation_input_tokens,
        )
        if outcome.response_model:  # a provider that echoes a key sent as the model
            outcome.response_model = t.model_name(outcome.response_model)
        applied = self._applied
        t.remember(  # now: feedback may come before a long schema check is done
            call.request_id,
            Served(
                span.context if span is not None else trace.INVALID_SPAN_CONTEXT,
                applied.name if applied else "",
                applied.version.hash if applied else "",
                applied.arm.value if applied else "",
                outcome.response_id,
            ),
        )
        if (
            applied is None
            or applied.version.content.response_schema is None
            or error is not None
            or not outcome.completed
        ):
            self._complete(status, error, cost, None)
            return
        t.schemas.check(applied.version, outcome.output_text(0), partial(self._complete, status, error, cost))

    def _complete(self, status: int | None, error: str | None, cost: float | None, valid: bool | None) -> None:
        """Metrics and span, with the schema's verdict (None: no schema, or not a whole answer)."""
        span, ended, outcome = self._span, self._ended, self._call.outcome
        assert outcome is not None
        self._metrics(status, error, ended, cost, valid, outcome)
        if span is not None:
            attributes = self._span_attributes(status, error, cost, valid)
            end_ns = span.start_ns + int((ended - self._started) * 1e9)
            self._t.call_spans.end(span, self._name, attributes, error is not None, end_ns)

    def _span_attributes(
        self, status: int | None, error: str | None, cost: float | None, valid: bool | None
    ) -> dict[str, Any]:
        call, outcome = self._call, self._call.outcome
        assert outcome is not None and call.body is not None  # a CallTrace is opened for JSON bodies only
        attributes = self._attributes.copy()
        add_request_attributes(attributes, self._model, call.body)
        add_response_attributes(attributes, outcome)
        if status is not None:
            attributes[sc.HTTP_STATUS_CODE] = status
        if outcome.first_chunk_at is not None and call.stream:
            first_chunk = outcome.first_chunk_at - self._started
            attributes[sc.TIME_TO_FIRST_CHUNK] = attributes[sc.RESPONSE_TIME_TO_FIRST_CHUNK] = first_chunk
        if cost is not None:
            attributes[sc.COST_USD] = cost
        if valid is not None:
            attributes[sc.SCHEMA_VALID] = valid
        if self._t.content.enabled and call.body is not None:
            self._content(attributes, outcome)
        if error is not None:
            attributes[sc.ERROR_TYPE] = error
        return attributes

    def _content(self, attributes: dict[str, Any], outcome: Outcome) -> None:
        assert self._call.body is not None
        recorder = self._t.content
        inputs, system = recorder.input_messages(self._call.endpoint, self._call.body, self._credential)
        attributes[sc.INPUT_MESSAGES] = inputs
        if system is not None:
            attributes[sc.SYSTEM_INSTRUCTIONS] = system
        tools = recorder.tool_definitions(self._call.body, self._credential)
        if tools is not None:
            attributes[sc.TOOL_DEFINITIONS] = tools
        if outcome.texts or outcome.reasoning or outcome.tool_calls or outcome.finish_reasons:
            attributes[sc.OUTPUT_MESSAGES] = recorder.output_messages(outcome, self._credential)

    def _metrics(
        self,
        status: int | None,
        error: str | None,
        ended: float,
        cost: float | None,
        valid: bool | None,
        outcome: Outcome,
    ) -> None:
        m, applied = self._t.metrics, self._applied
        model = m.model_label(outcome.response_model or self._model)
        labels = (applied.name, applied.version.hash, applied.arm.value) if applied else ("", "", "")
        status_class = "cancelled" if error == "cancelled" else f"{(status or 500) // 100}xx"
        first_chunk = (
            outcome.first_chunk_at - self._started if outcome.first_chunk_at is not None and self._call.stream else None
        )
        m.series(*labels, model).record(
            status_class, ended - self._started, first_chunk, outcome.input_tokens, outcome.output_tokens, cost
        )
        if valid is not None:
            m.schema_results.labels(*labels, model, "valid" if valid else "invalid").inc()
        if error in UPSTREAM_FAULTS or (outcome.status or 0) >= 400:
            m.upstream_errors.labels(model, status_class).inc()


def bearer_token(headers: CIMultiDictProxy[str]) -> str | None:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
