"""The ``flywheel`` console script: one command per role (SPEC §2).

This is the only place that reads the process environment: every flag falls back
to ``FLYWHEEL_<FLAG>`` and the environment is handed to the commands as a mapping.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import deploy.cli
import flywheel.demo.cli
import flywheel.registry.cli
import optimizer.cli
import proxy.config
import proxy.server

Command = Callable[[argparse.Namespace, Mapping[str, str]], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description="Self-improving prompt sidecar.")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    proxy_parser = commands.add_parser("proxy", help="run the OpenAI-compatible sidecar")
    proxy.config.add_arguments(proxy_parser)
    proxy_parser.set_defaults(run=proxy.server.command)
    flywheel.registry.cli.add_commands(commands)
    optimizer.cli.add_command(commands)
    deploy.cli.add_command(commands)
    flywheel.demo.cli.add_command(commands)
    return parser


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Let ``FLYWHEEL_<FLAG>`` stand in for any flag not given on the command line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply_env_defaults(sub, environ)
            continue
        if not action.option_strings or action.dest in ("help",):
            continue
        value = environ.get("FLYWHEEL_" + action.dest.upper())
        if value is None:
            continue
        try:
            action.default = action.type(value) if callable(action.type) else value
        except (TypeError, ValueError):
            parser.error(f"FLYWHEEL_{action.dest.upper()}={value!r} is not a valid {action.option_strings[0]}")
        action.required = False


def main(argv: Sequence[str] | None = None) -> int:
    environ = dict(os.environ)
    parser = build_parser()
    apply_env_defaults(parser, environ)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    run: Command = args.run
    return run(args, environ)


if __name__ == "__main__":
    sys.exit(main())
