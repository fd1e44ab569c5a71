"""The registry library: content addressing, templates, prompt files, rollouts, sticky
bucketing, atomic concurrent writes and the ConfigMap layout."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
from pathlib import Path

import orjson
import pytest

from flywheel.registry import (
    Arm,
    CorruptRegistry,
    InvalidPrompt,
    MissingVariables,
    Registry,
    RegistryError,
    Rollout,
    RolloutConflict,
    Template,
    UnknownPrompt,
    UnknownVersion,
    assign_arm,
    open_registry,
    parse_prompt_file,
)
from flywheel.registry.version import content_from_mapping
from tests.configmap import ConfigMapVolume


def _push(registry: Registry, name: str, template: str, **fields: object) -> str:
    version, _ = registry.push(name, content_from_mapping({"template": template, **fields}))
    return version.hash


# --- versions ------------------------------------------------------------------------


def test_identical_content_gives_the_same_hash(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    first, created = registry.push("support", content_from_mapping({"template": "Be kind.", "params": {"a": 1}}))
    again, created_again = registry.push("support", content_from_mapping({"params": {"a": 1}, "template": "Be kind."}))
    assert (first.hash, created, created_again) == (again.hash, True, False)
    assert len(first.hash) >= 12 and int(first.hash, 16) >= 0
    assert len(registry.versions("support")) == 1
    assert _push(registry, "support", "Be kinder.") != first.hash


def test_versions_record_parent_author_time_and_lineage(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    v1 = _push(registry, "support", "One.")
    v2, _ = registry.push(
        "support",
        content_from_mapping({"template": "Two."}),
        author="optimizer",
        lineage={"failures": ["req_1"], "report": "r/1"},
    )
    assert v2.parent == v1 and v2.author == "optimizer" and v2.created.endswith("Z")
    assert registry.version("support", v2.hash[:6]).lineage == {"failures": ["req_1"], "report": "r/1"}
    assert registry.version("support").hash == v1  # the first version is stable; pushing does not deploy
    with pytest.raises(UnknownVersion):
        registry.version("support", "ffffffffffff")
    with pytest.raises(UnknownPrompt):
        registry.rollout("nobody")
    with pytest.raises(RegistryError):
        registry.push("support", content_from_mapping({"template": "x"}), author="robot")


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("p.toml", 'template = "Hello {{ name }}"\nmodel = "gpt-x"\n[params]\ntemperature = 0.2\n'),
        ("p.json", '{"template": "Hello {{ name }}", "model": "gpt-x", "params": {"temperature": 0.2}}'),
    ],
)
def test_toml_and_json_files_are_the_same_version(tmp_path: Path, filename: str, text: str) -> None:
    path = tmp_path / filename
    path.write_text(text)
    content = parse_prompt_file(path)
    assert content.model == "gpt-x" and content.params == {"temperature": 0.2}
    assert content.variables == {"name"}
    other = tmp_path / ("q.json" if filename.endswith("toml") else "q.toml")
    other.write_text(
        '{"template": "Hello {{ name }}", "model": "gpt-x", "params": {"temperature": 0.2}}'
        if other.suffix == ".json"
        else 'template = "Hello {{ name }}"\nmodel = "gpt-x"\nparams = { temperature = 0.2 }\n'
    )
    registry = open_registry(tmp_path / "reg")
    assert registry.push("p", content)[0].hash == registry.push("p", parse_prompt_file(other))[0].hash


def test_plain_text_file_is_a_template(tmp_path: Path) -> None:
    path = tmp_path / "system.txt"
    path.write_text("You answer in French.\n")
    assert parse_prompt_file(path).template == Template.parse("You answer in French.\n")


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        ("bad.toml", "template = ", "bad.toml"),
        ("bad.json", "{not json", "bad.json"),
        ("list.json", "[1, 2]", "expected a JSON object"),
        ("both.json", '{"template": "a", "messages": []}', "exactly one of"),
        ("none.json", '{"model": "m"}', "exactly one of"),
        ("extra.json", '{"template": "a", "temperature": 1}', "unknown field(s) temperature"),
        ("roles.json", '{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0]"),
        ("schema.json", '{"template": "a", "response_schema": {"type": 12}}', "response_schema"),
        ("params.json", '{"template": "a", "params": {"messages": []}}', "messages"),
        ("empty.txt", "  \n", "empty"),
    ],
)
def test_bad_prompt_files_say_what_is_wrong(tmp_path: Path, filename: str, text: str, message: str) -> None:
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(InvalidPrompt, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_prompt_file(path)


def test_templates_never_execute_anything() -> None:
    template = Template.parse("Hi {{ name }}! {% for x in y %}{{ x.__class__ }}{{name}}{{ 7*7 }}")
    assert template.variables == {"name"}
    out = template.render({"name": "{{ secret }}"})
    assert out == "Hi {{ secret }}! {% for x in y %}{{ x.__class__ }}{{ secret }}{{ 7*7 }}"
    with pytest.raises(MissingVariables) as caught:
        Template.parse("{{a}} and {{ b }}").render({"a": "1"})
    assert caught.value.names == ["b"]


def test_corrupt_files_raise_corrupt_registry(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    v1 = _push(registry, "support", "One.")
    (tmp_path / "support.rollout.json").write_text('{"name": "support", "stab')
    with pytest.raises(CorruptRegistry, match="support.rollout.json"):
        registry.rollout("support")
    (tmp_path / f"support.v.{v1}.json").write_text("[]")
    with pytest.raises(CorruptRegistry):
        registry.versions("support")


# --- rollouts ------------------------------------------------------------------------


def test_rollback_restores_the_previous_stable_and_records_why(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    v1, v2 = _push(registry, "support", "One."), _push(registry, "support", "Two.")
    registry.set_rollout("support", stable=v1, canary=v2, weight=10, reason="try two")
    registry.promote("support", reason="two is better", actor="flywheel-canary")
    assert registry.rollout("support").stable == v2
    rolled = registry.rollback("support", reason="complaints about tone")
    assert (rolled.stable, rolled.canary, rolled.weight) == (v1, None, 0)
    last = rolled.history[-1]
    assert (last.action, last.reason, last.actor, last.stable) == ("rollback", "complaints about tone", "human", v1)
    actions = [c.action for c in registry.rollout("support").history]
    assert actions == ["create", "set", "promote", "rollback"]  # append-only, in order


def test_rollback_of_a_canary_drops_it_and_to_picks_a_version(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    v1, v2, v3 = (_push(registry, "support", t) for t in ("One.", "Two.", "Three."))
    registry.set_rollout("support", stable=v2, canary=v3, weight=50)
    assert registry.rollback("support", reason="canary worse").stable == v2
    assert registry.rollback("support", to=v1[:8]).stable == v1
    with pytest.raises(RolloutConflict, match="no canary"):
        registry.promote("support")
    with pytest.raises(RolloutConflict):
        registry.set_rollout("support", stable=v1, canary=v1, weight=5)
    with pytest.raises(RolloutConflict):
        registry.set_rollout("support", stable=v1, canary=v2, weight=101)


def test_compare_and_swap_refuses_a_stale_revision(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    v1, v2 = _push(registry, "support", "One."), _push(registry, "support", "Two.")
    revision = registry.rollout("support").revision
    registry.set_rollout("support", stable=v1, canary=v2, weight=5, expect_revision=revision)
    with pytest.raises(RolloutConflict, match="changed meanwhile"):
        registry.set_rollout("support", stable=v1, canary=v2, weight=50, expect_revision=revision)


def _rollout(weight: float, canary: str | None = "c0ffee000000", salt: str = "s1") -> Rollout:
    return Rollout(name="p", stable="5ab1e0000000", canary=canary, weight=weight, salt=salt)


def test_thirty_percent_canary_gets_thirty_percent_of_keys() -> None:
    keys = [f"user-{i}" for i in range(10_000)]
    canary = sum(assign_arm(_rollout(30), key) is Arm.CANARY for key in keys)
    assert 2800 <= canary <= 3200, canary
    assert all(assign_arm(_rollout(30), key) is assign_arm(_rollout(30), key) for key in keys[:500])
    assert not any(assign_arm(_rollout(0), key) is Arm.CANARY for key in keys)
    assert all(assign_arm(_rollout(100), key) is Arm.CANARY for key in keys)
    assert not any(assign_arm(_rollout(50, canary=None), key) is Arm.CANARY for key in keys)


def test_raising_the_weight_moves_only_keys_that_must_move() -> None:
    keys = [f"user-{i}" for i in range(10_000)]
    at10 = {k for k in keys if assign_arm(_rollout(10), k) is Arm.CANARY}
    at25 = {k for k in keys if assign_arm(_rollout(25), k) is Arm.CANARY}
    assert at10 <= at25  # every key that was canary stays canary
    assert 2300 <= len(at25) <= 2700 and 800 <= len(at10) <= 1200
    at5 = {k for k in keys if assign_arm(_rollout(5), k) is Arm.CANARY}
    assert at5 <= at10  # lowering moves keys back to stable only


def test_salt_and_a_new_canary_reshuffle_the_population() -> None:
    keys = [f"user-{i}" for i in range(10_000)]
    base = {k for k in keys if assign_arm(_rollout(30), k) is Arm.CANARY}
    other_salt = {k for k in keys if assign_arm(_rollout(30, salt="s2"), k) is Arm.CANARY}
    other_canary = {k for k in keys if assign_arm(_rollout(30, canary="aaaaaaaaaaaa"), k) is Arm.CANARY}
    # Independent draws overlap ~9 % (0.3 × 0.3), nowhere near the 30 % of an identical draw.
    assert len(base & other_salt) < 1200 and len(base & other_canary) < 1200


# --- atomic writes -------------------------------------------------------------------


def _set_weights(root: str, name: str, stable: str, canary: str, worker: int, count: int) -> None:
    registry = open_registry(root)
    for i in range(count):
        registry.set_rollout(name, stable=stable, canary=canary, weight=1, reason=f"w{worker}-{i}")


def test_concurrent_writers_in_processes_lose_no_update(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    v1, v2 = _push(registry, "support", "One."), _push(registry, "support", "Two.")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=context) as pool:
        jobs = [pool.submit(_set_weights, str(tmp_path), "support", v1, v2, w, 25) for w in range(4)]
        for job in jobs:
            job.result()
    rollout = registry.rollout("support")
    reasons = {c.reason for c in rollout.history}
    assert rollout.revision == 1 + 100 and all(f"w{w}-{i}" in reasons for w in range(4) for i in range(25))


def test_readers_never_see_a_half_written_file(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    v1, v2 = _push(registry, "support", "One."), _push(registry, "support", "Two." * 2000)
    stop = threading.Event()
    reads = 0

    def read_constantly() -> None:
        nonlocal reads
        reader = open_registry(tmp_path)
        while not stop.is_set():
            reader.rollout("support")  # raises CorruptRegistry on a torn file
            reads += 1

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        readers = [pool.submit(read_constantly) for _ in range(2)]
        for i in range(150):
            registry.set_rollout("support", stable=v1, canary=v2, weight=i % 100, reason="x" * (i * 37 % 500))
        stop.set()
        for reader in readers:
            reader.result()
    assert reads > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- Kubernetes ConfigMap layout -------------------------------------------------------


def test_configmap_volume_reads_unchanged_and_swaps_atomically(tmp_path: Path) -> None:
    source = open_registry(tmp_path / "source")
    v1 = _push(source, "support", "One.")
    volume = ConfigMapVolume(tmp_path / "mounted")
    volume.publish(tmp_path / "source")
    mounted = open_registry(volume.root)
    assert mounted.names() == ["support"] and mounted.version("support").hash == v1
    before = mounted.store.fingerprint()

    v2 = _push(source, "support", "Two.")
    source.set_rollout("support", stable=v1, canary=v2, weight=30, reason="canary")
    volume.publish(tmp_path / "source", link_new_keys=False)  # the instant after the kubelet's rename
    assert mounted.store.fingerprint() != before
    rollout = mounted.rollout("support")
    assert rollout.canary == v2 and mounted.version("support", v2).hash == v2
    with pytest.raises(RegistryError, match="read-only"):
        mounted.set_rollout("support", stable=v2)


def test_registry_file_is_plain_json(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    v1 = _push(registry, "support", "One.")
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["support.rollout.json", f"support.v.{v1}.json"]
    record = orjson.loads((tmp_path / "support.rollout.json").read_bytes())
    assert record["stable"] == v1 and record["weight"] == 0 and len(record["salt"]) >= 16
