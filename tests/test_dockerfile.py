"""The Dockerfile, checked as far as a machine without a Docker engine allows: its
instructions parsed and held to the rules, and each role it runs started for real."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_two_stages_slim_non_root_with_healthcheck() -> None:
    steps = instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert stages == ["python:3.11-slim AS build", "python:3.11-slim"]
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(word == "HEALTHCHECK" and "/healthz" in rest for word, rest in final)
    runs = " ".join(rest for word, rest in final if word == "RUN")
    assert not any(tool in runs for tool in ("apt-get", "gcc", "build-essential"))  # no build tools in the final stage
    assert ("ENTRYPOINT", '["flywheel"]') in final


def test_copied_sources_exist_and_cover_every_package() -> None:
    copied = {rest.split()[0] for word, rest in instructions() if word == "COPY" and not rest.startswith("--from")}
    assert {"flywheel", "proxy", "optimizer", "deploy"} <= copied
    assert all((ROOT / path).exists() for path in copied)


def test_every_role_the_image_runs_starts() -> None:
    script = shutil.which("flywheel")
    assert script, "the flywheel console script (pip install .)"
    for role in ("proxy", "optimize", "canary", "prompts", "rollout", "promote", "rollback"):
        done = subprocess.run([script, role, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "usage: flywheel" in done.stdout, (role, done.stderr)
    # and the healthcheck's command is plain Python, as in the image
    command = next(rest for word, rest in instructions() if word == "HEALTHCHECK")
    assert '"python", "-c"' in command
