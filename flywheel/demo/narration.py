"""How the demo talks: a live rich display on a terminal, plain lines otherwise."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, TextIO

BANNER_SIMULATED = "SIMULATION: the provider and the users are simulated; no real model is called."


class _Count:
    def __init__(self, advance: Any = None) -> None:
        self._advance = advance

    def advance(self) -> None:
        if self._advance is not None:
            self._advance()


class PlainNarrator:
    """Line by line, for logs, CI and pipes."""

    def __init__(self, simulated: bool, out: TextIO = sys.stdout) -> None:
        self._tag = "[simulation] " if simulated else ""
        self._out = out

    def stage(self, title: str) -> None:
        print(f"\n{self._tag}== {title}", file=self._out, flush=True)

    def note(self, text: str) -> None:
        print(f"{self._tag}   {text}", file=self._out, flush=True)

    @contextlib.contextmanager
    def traffic(self, label: str, total: int) -> Iterator[_Count]:
        print(f"{self._tag}   {total} calls from {label} …", file=self._out, flush=True)
        yield _Count()


class RichNarrator:
    """Stages as rules, notes as log lines, traffic as a live progress bar."""

    def __init__(self, simulated: bool) -> None:
        from rich.console import Console

        self._console = Console()
        self._simulated = simulated
        if simulated:
            self._console.rule(f"[bold yellow]{BANNER_SIMULATED}")

    def stage(self, title: str) -> None:
        tag = "[yellow](simulation)[/] " if self._simulated else ""
        self._console.rule(f"{tag}[bold]{title}")

    def note(self, text: str) -> None:
        self._console.log(text, markup=False)

    @contextlib.contextmanager
    def traffic(self, label: str, total: int) -> Iterator[_Count]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self._console, transient=True) as progress:
            task = progress.add_task(f"calls from {label}", total=total)
            yield _Count(lambda: progress.advance(task))
        self._console.log(f"{total} calls from {label} done", markup=False)


def narrator(simulated: bool, plain: bool) -> PlainNarrator | RichNarrator:
    """Rich on a terminal when it is installed (``pip install 'flywheel[demo]'``), else plain."""
    if not plain and sys.stdout.isatty():
        try:
            return RichNarrator(simulated)
        except ImportError:
            pass
    narration = PlainNarrator(simulated)
    if simulated:
        print(BANNER_SIMULATED, flush=True)
    return narration
