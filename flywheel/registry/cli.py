"""``flywheel prompts|rollout|promote|rollback`` (SPEC §2): the registry from the command line."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

import orjson

from flywheel.registry.errors import RegistryError
from flywheel.registry.registry import Registry, open_registry
from flywheel.registry.rollout import Rollout
from flywheel.registry.version import AUTHORS, Version, parse_prompt_file


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prompts = commands.add_parser("prompts", help="push, list, show and diff prompt versions")
    sub = prompts.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    push = _command(sub, "push", "register a prompt file as a version; prints its hash", _push)
    push.add_argument("name")
    push.add_argument("--file", type=Path, required=True, help="TOML, JSON or plain-text prompt file")
    push.add_argument("--author", choices=AUTHORS, default="human")
    push.add_argument("--parent", help="parent version (default: the current stable)")
    _command(sub, "list", "prompts with their rollout", _list)
    show = _command(sub, "show", "a version (NAME for the stable one, NAME@HASH for another)", _show)
    show.add_argument("ref", metavar="NAME[@HASH]")
    diff = _command(sub, "diff", "what changed between two versions", _diff)
    diff.add_argument("name")
    diff.add_argument("a")
    diff.add_argument("b")

    rollout = commands.add_parser("rollout", help="show or set a prompt's rollout")
    sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    show = _command(sub, "show", "stable, canary, weight and history", _rollout_show)
    show.add_argument("name")
    set_ = _command(sub, "set", "set the stable version, and optionally a canary with a weight", _rollout_set)
    set_.add_argument("name")
    set_.add_argument("--stable", required=True)
    set_.add_argument("--canary")
    set_.add_argument("--weight", type=float, default=0.0, help="percent of keys on the canary (0–100)")
    _change_flags(set_)

    promote = _command(commands, "promote", "make the canary the stable version", _promote)
    promote.add_argument("name")
    _change_flags(promote)
    rollback = _command(commands, "rollback", "drop the canary, or return to the previous stable", _rollback)
    rollback.add_argument("name")
    rollback.add_argument("--to", help="a version to return to (default: the previous stable)")
    _change_flags(rollback)


def _command(sub: Any, name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--registry", default="./.flywheel", help="DIR or k8s://NAMESPACE/CONFIGMAP")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(run=lambda args, environ: _guarded(run, args, environ.get("KUBECONFIG")))
    return parser


def _change_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="why, recorded in the history")
    parser.add_argument("--actor", default="human", help="who, recorded in the history")


def _guarded(run: Any, args: argparse.Namespace, kubeconfig: str | None) -> int:
    try:
        run(open_registry(args.registry, kubeconfig), args)
    except RegistryError as exc:
        print(f"flywheel: {exc}", file=sys.stderr)
        return 1
    return 0


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(human)


def _push(registry: Registry, args: argparse.Namespace) -> None:
    content = parse_prompt_file(args.file)
    version, created = registry.push(args.name, content, author=args.author, parent=args.parent)
    _emit(args, {**_version_json(version), "created": created}, version.hash)


def _list(registry: Registry, args: argparse.Namespace) -> None:
    rows = []
    for name in registry.names():
        rollout = registry.rollout(name)
        rows.append({**_rollout_json(rollout, history=False), "versions": len(registry.versions(name))})
    lines = [f"{'NAME':24} {'STABLE':14} {'CANARY':14} {'WEIGHT':>6} {'VERSIONS':>8}"]
    lines += [
        f"{r['name']:24} {r['stable']:14} {r['canary'] or '-':14} {r['weight']:>5g}% {r['versions']:>8}" for r in rows
    ]
    _emit(args, rows, "\n".join(lines))


def _show(registry: Registry, args: argparse.Namespace) -> None:
    name, _, ref = args.ref.partition("@")
    version = registry.version(name, ref or None)
    _emit(args, _version_json(version), _version_text(version))


def _diff(registry: Registry, args: argparse.Namespace) -> None:
    a, b = registry.version(args.name, args.a), registry.version(args.name, args.b)
    lines = difflib.unified_diff(
        _body_text(a).splitlines(), _body_text(b).splitlines(), f"{a.name}@{a.hash}", f"{b.name}@{b.hash}", lineterm=""
    )
    text = "\n".join(lines)
    _emit(args, {"a": _version_json(a), "b": _version_json(b), "diff": text}, text or "(no difference)")


def _rollout_show(registry: Registry, args: argparse.Namespace) -> None:
    rollout = registry.rollout(args.name)
    _emit(args, _rollout_json(rollout), _rollout_text(rollout))


def _rollout_set(registry: Registry, args: argparse.Namespace) -> None:
    if args.weight and not args.canary:
        raise RegistryError("--weight needs --canary")
    rollout = registry.set_rollout(
        args.name, stable=args.stable, canary=args.canary, weight=args.weight, actor=args.actor, reason=args.reason
    )
    _emit(args, _rollout_json(rollout), _rollout_text(rollout))


def _promote(registry: Registry, args: argparse.Namespace) -> None:
    rollout = registry.promote(args.name, actor=args.actor, reason=args.reason)
    _emit(args, _rollout_json(rollout), _rollout_text(rollout))


def _rollback(registry: Registry, args: argparse.Namespace) -> None:
    rollout = registry.rollback(args.name, to=args.to, actor=args.actor, reason=args.reason)
    _emit(args, _rollout_json(rollout), _rollout_text(rollout))


# --- rendering ---------------------------------------------------------------------


def _version_json(version: Version) -> dict[str, Any]:
    return orjson.loads(version.to_json())  # type: ignore[no-any-return]


def _rollout_json(rollout: Rollout, history: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(rollout.to_json())
    if not history:
        data.pop("history")
    return data


def _body_text(version: Version) -> str:
    content = version.content.canonical()
    parts = []
    if "template" in content:
        parts.append(content.pop("template"))
    for message in content.pop("messages", ()):
        parts.append(f"[{message['role']}]\n{message['content']}")
    parts += [f"{key}: {_compact(value)}" for key, value in content.items()]
    return "\n".join(parts)


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _version_text(version: Version) -> str:
    head = f"{version.name}@{version.hash}  author={version.author}  parent={version.parent or '-'}  created={version.created}"
    return head + "\n\n" + _body_text(version)


def _rollout_text(rollout: Rollout) -> str:
    canary = f"{rollout.canary} at {rollout.weight:g}%" if rollout.canary else "none"
    lines = [f"{rollout.name}: stable {rollout.stable}, canary {canary} (revision {rollout.revision})", "history:"]
    for change in rollout.history:
        why = f" — {change.reason}" if change.reason else ""
        target = f"stable={change.stable}" + (f" canary={change.canary}@{change.weight:g}%" if change.canary else "")
        lines.append(f"  {change.at}  {change.actor:12} {change.action:9} {target}{why}")
    return "\n".join(lines)


__all__ = ["add_commands"]
