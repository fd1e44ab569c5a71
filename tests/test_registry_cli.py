"""``flywheel prompts|rollout|promote|rollback``: human output, ``--json``, history, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from flywheel.cli import main


class Flywheel:
    """Runs ``flywheel`` commands in-process against one registry directory."""

    def __init__(self, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.registry = registry
        self.capsys = capsys

    def __call__(self, *args: str, ok: bool = True) -> str:
        self.capsys.readouterr()
        code = main([*args, "--registry", str(self.registry)])
        out, err = self.capsys.readouterr()
        assert (code == 0) is ok, (code, out, err)
        return out if ok else err

    def json(self, *args: str) -> Any:
        return orjson.loads(self(*args, "--json"))


@pytest.fixture
def flywheel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Flywheel:
    return Flywheel(tmp_path / "registry", capsys)


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_push_prints_the_hash_and_is_idempotent(tmp_path: Path, flywheel: Flywheel) -> None:
    prompt = _file(tmp_path, "support.toml", 'template = "You are a support agent for {{product}}."\n')
    first = flywheel("prompts", "push", "support", "--file", prompt).strip()
    assert len(first) == 12
    assert flywheel("prompts", "push", "support", "--file", prompt).strip() == first
    pushed = flywheel.json("prompts", "push", "support", "--file", prompt)
    assert (pushed["hash"], pushed["created"], pushed["author"]) == (first, False, "human")


def test_list_show_and_diff(tmp_path: Path, flywheel: Flywheel) -> None:
    v1 = flywheel("prompts", "push", "support", "--file", _file(tmp_path, "a.txt", "Be brief.\nBe kind.")).strip()
    v2 = flywheel(
        "prompts", "push", "support", "--file", _file(tmp_path, "b.json", '{"template": "Be brief.\\nBe warm."}')
    ).strip()
    flywheel("prompts", "push", "billing", "--file", _file(tmp_path, "c.txt", "Invoices only."))

    listed = flywheel("prompts", "list")
    assert listed.splitlines()[0].split() == ["NAME", "STABLE", "CANARY", "WEIGHT", "VERSIONS"]
    assert any(line.split()[:2] == ["support", v1] and line.split()[-1] == "2" for line in listed.splitlines())
    rows = flywheel.json("prompts", "list")
    assert [(r["name"], r["versions"]) for r in rows] == [("billing", 1), ("support", 2)]

    shown = flywheel("prompts", "show", "support")
    assert shown.startswith(f"support@{v1}") and "Be kind." in shown
    assert flywheel.json("prompts", "show", f"support@{v2[:7]}")["parent"] == v1

    diff = flywheel("prompts", "diff", "support", v1, v2)
    assert "-Be kind." in diff and "+Be warm." in diff
    assert flywheel.json("prompts", "diff", "support", v1, v1)["diff"] == ""
    assert flywheel("prompts", "diff", "support", v1, v1).strip() == "(no difference)"


def test_rollout_set_promote_and_rollback_write_the_history(tmp_path: Path, flywheel: Flywheel) -> None:
    v1 = flywheel("prompts", "push", "support", "--file", _file(tmp_path, "a.txt", "One.")).strip()
    v2 = flywheel("prompts", "push", "support", "--file", _file(tmp_path, "b.txt", "Two.")).strip()

    text = flywheel("rollout", "set", "support", "--stable", v1, "--canary", v2, "--weight", "30", "--reason", "try")
    assert f"canary {v2} at 30%" in text
    state = flywheel.json("rollout", "show", "support")
    assert (state["stable"], state["canary"], state["weight"]) == (v1, v2, 30)

    promoted = flywheel.json("promote", "support", "--reason", "better CSAT", "--actor", "alice")
    assert (promoted["stable"], promoted["canary"]) == (v2, None)
    assert promoted["history"][-1] | {"at": None} == {
        "at": None,
        "actor": "alice",
        "action": "promote",
        "reason": "better CSAT",
        "stable": v2,
        "canary": None,
        "weight": 0,
    }

    rolled = flywheel.json("rollback", "support", "--reason", "tone regression")
    assert rolled["stable"] == v1 and rolled["history"][-1]["reason"] == "tone regression"
    history = flywheel("rollout", "show", "support")
    assert "rollback" in history and "tone regression" in history and "better CSAT" in history
    assert flywheel.json("rollback", "support", "--to", v2)["stable"] == v2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rollout", "show", "nobody"), "no prompt named 'nobody'"),
        (("prompts", "show", "support@ffff"), "no version of 'support' matches 'ffff'"),
        (("promote", "support"), "no canary to promote"),
        (("rollback", "support"), "no earlier stable"),
        (("rollout", "set", "support", "--stable", "ABC", "--weight", "5"), "--weight needs --canary"),
        (("prompts", "push", "bad/name", "--file", "PROMPT"), "invalid prompt name"),
        (("prompts", "push", "support", "--file", "/nonexistent.toml"), "cannot read"),
    ],
)
def test_errors_are_one_clear_line_and_exit_1(
    tmp_path: Path, flywheel: Flywheel, args: tuple[str, ...], message: str
) -> None:
    prompt = _file(tmp_path, "a.txt", "One.")
    flywheel("prompts", "push", "support", "--file", prompt)
    err = flywheel(*(prompt if a == "PROMPT" else a for a in args), ok=False)
    assert err.startswith("flywheel: ") and message in err and "Traceback" not in err


def test_console_script_reads_flywheel_registry_from_the_environment(tmp_path: Path) -> None:
    script = shutil.which("flywheel")
    assert script is not None, "pip install -e . puts the flywheel console script on PATH"
    prompt = _file(tmp_path, "a.txt", "One.")
    env = {**os.environ, "FLYWHEEL_REGISTRY": str(tmp_path / "from-env")}
    pushed = subprocess.run([script, "prompts", "push", "support", "--file", prompt], env=env, capture_output=True)
    assert pushed.returncode == 0, pushed.stderr
    listed = subprocess.run([script, "prompts", "list", "--json"], env=env, capture_output=True, check=True)
    assert orjson.loads(listed.stdout)[0]["stable"] == pushed.stdout.decode().strip()
    assert (tmp_path / "from-env" / "support.rollout.json").exists()


def _kubeconfig(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t0ken}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    return str(path)


@pytest.mark.parametrize(
    ("registry", "kubeconfig", "message"),
    [
        ("k8s://only-namespace", None, "expected k8s://NAMESPACE/CONFIGMAP"),
        ("k8s://ns/cm", "missing", "no in-cluster service account and no kubeconfig"),
        ("k8s://ns/cm", "closed-port", "cannot reach the Kubernetes API"),
    ],
)
def test_k8s_registry_errors_are_clear(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    registry: str,
    kubeconfig: str | None,
    message: str,
) -> None:
    import socket

    if kubeconfig == "missing":
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    elif kubeconfig == "closed-port":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, f"https://127.0.0.1:{port}"))
    assert main(["rollout", "show", "support", "--registry", registry]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flywheel: ") and message in err and "Traceback" not in err
