"""Registry errors; the CLI prints them, the proxy renders them in the OpenAI shape.

RegistryError
├── InvalidPrompt        a prompt file or name that cannot be a version
├── MissingVariables     rendering needs variables the request did not give
├── UnknownPrompt        no prompt by that name
├── UnknownVersion       no (or an ambiguous) version for that hash prefix
├── RolloutConflict      the rollout changed under a compare-and-swap, or the change is not allowed
└── CorruptRegistry      a registry file that cannot be read back
"""

from __future__ import annotations

from collections.abc import Iterable


class RegistryError(Exception):
    """Anything the registry refuses; the message is meant for the user."""


class InvalidPrompt(RegistryError):
    pass


class MissingVariables(RegistryError):
    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted(names)
        super().__init__("missing template variables: " + ", ".join(self.names))


class UnknownPrompt(RegistryError):
    pass


class UnknownVersion(RegistryError):
    pass


class RolloutConflict(RegistryError):
    pass


class CorruptRegistry(RegistryError):
    pass
