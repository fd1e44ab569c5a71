"""``{{var}}`` templates with no logic: text and named holes, never executed (no Jinja)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from flywheel.registry.errors import MissingVariables

_HOLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True, slots=True)
class Template:
    """Parsed once; ``parts`` alternates literal text and variable names (odd indexes)."""

    text: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        return cls(text, tuple(_HOLE.split(text)))

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(self.parts[1::2])

    def render(self, values: Mapping[str, str]) -> str:
        if len(self.parts) == 1:
            return self.text
        missing = [name for name in self.parts[1::2] if name not in values]
        if missing:
            raise MissingVariables(missing)
        return "".join(part if i % 2 == 0 else values[part] for i, part in enumerate(self.parts))


def variables_of(text: str) -> frozenset[str]:
    return frozenset(_HOLE.findall(text))
