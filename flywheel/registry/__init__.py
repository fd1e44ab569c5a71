"""The prompt registry (SPEC §3): immutable content-addressed versions and per-prompt rollouts.

``template`` renders ``{{var}}`` placeholders (no logic); ``version`` parses prompt
files and hashes their content; ``rollout`` holds stable/canary/weight/salt, the
history, and ``assign_arm``; ``store`` keeps the flat files atomically; ``registry``
is the API the CLI, the proxy, the optimizer and the canary controller share.
"""

from flywheel.registry.errors import (
    CorruptRegistry,
    InvalidPrompt,
    MissingVariables,
    RegistryError,
    RolloutConflict,
    UnknownPrompt,
    UnknownVersion,
)
from flywheel.registry.registry import Registry, open_registry
from flywheel.registry.rollout import Arm, Change, Rollout, assign_arm, bucket_of
from flywheel.registry.template import Template
from flywheel.registry.version import PromptContent, Version, content_hash, parse_prompt_file

__all__ = [
    "Arm",
    "Change",
    "CorruptRegistry",
    "InvalidPrompt",
    "MissingVariables",
    "PromptContent",
    "Registry",
    "RegistryError",
    "Rollout",
    "RolloutConflict",
    "Template",
    "UnknownPrompt",
    "UnknownVersion",
    "Version",
    "assign_arm",
    "bucket_of",
    "content_hash",
    "open_registry",
    "parse_prompt_file",
]
