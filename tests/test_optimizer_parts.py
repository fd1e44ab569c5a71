"""The optimizer's parts on their own: expectations, the exact test, candidate parsing,
and model calls (budget, 429 backoff) against the fake provider."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from flywheel.registry import Version
from flywheel.registry.version import content_from_mapping
from optimizer.candidates import Candidate, Rejected, meta_prompt, parse_candidate
from optimizer.gate import Gate, binomial_tail, failure_cases
from optimizer.golden import Expectation, GoldenError, load_golden
from optimizer.llm import LLM, BudgetExhausted, Model
from optimizer.mining import Failure, FailureKind
from optimizer.records import CallRecord
from proxy.content import CaptureContent, ContentRecorder
from proxy.observation import Outcome
from tests.fake_upstream import FakeUpstream, Reply

CHAT = "/v1/chat/completions"


def test_exact_mcnemar_tail() -> None:
    assert binomial_tail(0, 0) == 1.0
    assert binomial_tail(5, 5) == pytest.approx(1 / 32)
    assert binomial_tail(4, 5) == pytest.approx(6 / 32)
    assert binomial_tail(8, 10) == pytest.approx(56 / 1024)


@pytest.mark.parametrize(
    ("kind", "value", "answer", "passed"),
    [
        ("exact", "Paris", " Paris\n", True),
        ("exact", "Paris", "paris", False),
        ("contains", "refund", "We will REFUND you.", True),
        ("regex", r"^\d{4}-\d{2}$", "2026-11", True),
        ("regex", r"^\d{4}-\d{2}$", "Nov 2026", False),
        ("schema", {"type": "object", "required": ["a"]}, '{"a": 1}', True),
        ("schema", {"type": "object", "required": ["a"]}, "a: 1", False),
        ("ok", True, "anything", True),
    ],
)
async def test_expectations(kind: str, value: object, answer: str, passed: bool) -> None:
    assert await Expectation(kind, value).check(answer, [], None) is passed
    assert await Expectation(kind, value).check(None, [], None) is False  # an error never passes


async def test_judge_expectation_asks_the_judge() -> None:
    asked = []

    async def judge(rubric: str, messages: list[dict[str, object]], answer: str) -> bool:
        asked.append((rubric, answer))
        return answer == "good"

    assert await Expectation("judge", "be good").check("good", [], judge)
    assert not await Expectation("judge", "be good").check("bad", [], judge)
    assert asked == [("be good", "good"), ("be good", "bad")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"expect": {"regex": "("}}', "bad regex"),
        ('{"expect": {"schema": {"type": 5}}}', "bad schema"),
        ('{"messages": "hi", "expect": {"ok": true}}', "`messages` must be a list"),
        ('{"expect": {"contains": "a", "exact": "b"}}', "`expect` must be one of"),
        ('{"tools": [{"type": "function"}], "expect": {"ok": true}}', "`tools` must be a list"),
        ('{"tools": {"weather": {}}, "expect": {"ok": true}}', "`tools` must be a list"),
    ],
)
def test_bad_golden_lines(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(GoldenError, match=message):
        load_golden(path)


def test_candidates_must_keep_the_variables() -> None:
    parent = "Help {{customer}} with {{product}}."
    assert isinstance(
        parse_candidate('{"rationale": "r", "prompt": "Kindly help {{customer}} with {{product}}."}', parent, 1),
        Candidate,
    )
    dropped = parse_candidate('{"prompt": "Help {{customer}}."}', parent, 1)
    added = parse_candidate('{"prompt": "Help {{customer}} with {{product}} in {{language}}."}', parent, 1)
    assert isinstance(dropped, Rejected) and "missing ['product']" in dropped.reason
    assert isinstance(added, Rejected) and "added ['language']" in added.reason
    assert isinstance(parse_candidate("Sure! Here is a prompt", parent, 1), Rejected)
    assert isinstance(
        parse_candidate('```json\n{"prompt": "Help {{customer}} with {{product}}!"}\n```', parent, 1), Candidate
    )
    assert isinstance(parse_candidate(f'{{"prompt": "{parent}"}}', parent, 1), Rejected)


async def test_model_calls_back_off_on_429_and_stop_at_the_budget(upstream: FakeUpstream) -> None:
    limited = b'{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}'
    upstream.script(CHAT, Reply(status=429, body=[limited]), Reply(status=429, body=[limited]))
    llm = LLM(max_calls=4, backoff=0.01)
    model = Model("task", upstream.url + "/v1", "sk-test")
    answer = await llm.complete(model, [{"role": "user", "content": "hi"}])
    assert answer.text == "echo: hi" and llm.calls == 3 and (llm.input_tokens, llm.output_tokens) == (7, 5)
    await llm.complete(model, [{"role": "user", "content": "again"}])
    with pytest.raises(BudgetExhausted):
        await llm.complete(model, [{"role": "user", "content": "one too many"}])
    assert len([s for s in upstream.seen if s.path == CHAT]) == 4


def test_a_captured_agent_turn_replays_as_the_chat_it_was() -> None:
    """What content capture records (the conventions' parts) goes back into chat messages
    the API accepts: tool calls on the assistant message, answers as ``tool`` messages."""
    call = {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    chat = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"celsius":3}'},
        {"role": "assistant", "content": "3 °C."},
    ]
    recorded, _ = ContentRecorder(CaptureContent.FULL).input_messages(
        "chat/completions", {"messages": [{"role": "system", "content": "Be brief."}, *chat]}, None
    )
    record = CallRecord("r1", "p", "v1", "stable", "m", None, None, recorded, None)
    version = Version("p", "v1", content_from_mapping({"template": "Be brief."}), None, "t", "2026-12-02T00:00:00Z")
    [case] = failure_cases([Failure(record, frozenset({FailureKind.NEGATIVE_FEEDBACK}))], version)
    assert list(case.messages) == chat


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def test_a_replayed_agent_turn_offers_the_tools_it_was_offered(upstream: FakeUpstream) -> None:
    """The tools a call offered (``gen_ai.tool.definitions``) go back to the model when the
    gate replays it, in the chat API's shape; a built-in tool of the Responses API, which
    chat has no form for, is left out. An answer that calls a tool is judged as that call."""
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER, {"type": "web_search"}]}
    recorder = ContentRecorder(CaptureContent.FULL)
    recorded, _ = recorder.input_messages("chat/completions", body, None)
    record = CallRecord(
        "r1", "p", "v1", "stable", "m", None, None, recorded, None, tools_json=recorder.tool_definitions(body, None)
    )
    version = Version("p", "v1", content_from_mapping({"template": "Be brief."}), None, "t", "2026-12-02T00:00:00Z")
    [case] = failure_cases([Failure(record, frozenset({FailureKind.NEGATIVE_FEEDBACK}))], version)
    assert case.tools == (WEATHER,)
    model = Model("task", upstream.url + "/v1", "sk-test")
    verdict = await Gate(LLM(max_calls=4), model, model, version, [case]).evaluate("Be very brief.")
    sent = [s.json() for s in upstream.seen if s.path == CHAT]
    assert [b["tools"] for b in sent] == [[WEATHER], [WEATHER]]  # parent, then candidate
    assert orjson.loads(verdict.results[0].candidate.answer or "") == [
        {"name": "weather", "arguments": '{"city":"Paris"}'}
    ]


def test_golden_cases_may_offer_tools(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    line = {"messages": [{"role": "user", "content": "Paris?"}], "tools": [WEATHER], "expect": {"contains": "weather"}}
    path.write_bytes(orjson.dumps(line) + b"\n")
    [case] = load_golden(path)
    assert case.tools == (WEATHER,)


def test_the_optimizer_model_sees_what_an_agent_did() -> None:
    """A failed agent turn reaches the optimizer model with its tool calls and the tools'
    answers, in the input and in the answer (which may be a call and no text)."""
    recorder = ContentRecorder(CaptureContent.FULL)
    call = {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    body = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": "3 degrees"},
        ]
    }
    recorded, _ = recorder.input_messages("chat/completions", body, None)
    outcome = Outcome("chat/completions", keep_text=True)
    message = {"role": "assistant", "content": None, "tool_calls": [{**call, "id": "call_1"}]}
    outcome.read_json({"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})
    answered = recorder.output_messages(outcome, None)
    record = CallRecord("r1", "p", "v1", "stable", "m", None, None, recorded, answered)
    _, asked = meta_prompt("Be brief.", [Failure(record, frozenset({FailureKind.NEGATIVE_FEEDBACK}))], [])
    said = asked["content"]
    assert (
        'Input: [user] Weather in Oslo? [assistant] calls weather({"city":"Oslo"}) [tool] tool answered 3 degrees'
        in said
    )
    assert 'Answer: [assistant] calls weather({"city":"Oslo"})' in said


def test_a_replay_leaves_out_what_chat_cannot_carry() -> None:
    """A Responses API conversation with a reasoning item and a built-in tool's item replays
    as its user turns and tool calls; those items (and an image-only turn) have no chat form."""
    body = {
        "input": [
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/cat.png"}]},
            {"role": "user", "content": "Weather in Oslo?"},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Look it up."}]},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "function_call", "call_id": "fc_1", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "fc_1", "output": "3 degrees"},
        ]
    }
    recorded, _ = ContentRecorder(CaptureContent.FULL).input_messages("responses", body, None)
    record = CallRecord("r1", "p", "v1", "stable", "m", None, None, recorded, None)
    version = Version("p", "v1", content_from_mapping({"template": "Be brief."}), None, "t", "2026-12-02T00:00:00Z")
    [case] = failure_cases([Failure(record, frozenset({FailureKind.NEGATIVE_FEEDBACK}))], version)
    call = {"id": "fc_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    assert list(case.messages) == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "fc_1", "content": "3 degrees"},
    ]


@pytest.mark.parametrize("mode", [CaptureContent.FULL, CaptureContent.REDACTED])
async def test_a_gemini_thought_signature_goes_back_with_its_tool_call(
    upstream: FakeUpstream, mode: CaptureContent
) -> None:
    """Gemini's OpenAI-compatible API puts a thought signature on each tool call
    (``extra_content.google.thought_signature``) and Gemini 3 refuses a tool turn sent back
    without it: the captured call keeps it, and the gate's replay sends it upstream."""
    signature = "CiQBcsjafE3Yq9x/kR1wz+Tb4gNHp2Lm5Qv8sUe7oJ0aXyZ1bWc="
    extra = {"google": {"thought_signature": signature}}
    call = {
        "id": "call_0",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        "extra_content": extra,
    }
    chat = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"celsius":3}'},
    ]
    recorder = ContentRecorder(mode)
    body = {"messages": chat, "tools": [WEATHER]}
    recorded, _ = recorder.input_messages("chat/completions", body, None)
    assert orjson.loads(recorded)[1]["parts"][0]["extra_content"] == extra
    record = CallRecord(
        "r1", "p", "v1", "stable", "m", None, None, recorded, None, tools_json=recorder.tool_definitions(body, None)
    )
    version = Version("p", "v1", content_from_mapping({"template": "Be brief."}), None, "t", "2026-12-02T00:00:00Z")
    [case] = failure_cases([Failure(record, frozenset({FailureKind.NEGATIVE_FEEDBACK}))], version)
    assert list(case.messages) == chat
    model = Model("task", upstream.url + "/v1", "sk-test")
    await Gate(LLM(max_calls=4), model, model, version, [case]).evaluate("Be very brief.")
    sent = [s.json() for s in upstream.seen if s.path == CHAT]
    assert len(sent) == 2  # parent, then candidate
    for replayed in sent:
        [assistant] = [m for m in replayed["messages"] if m["role"] == "assistant"]
        assert assistant["tool_calls"][0]["extra_content"] == extra
