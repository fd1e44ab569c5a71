"""The registry API shared by the CLI, the proxy, the optimizer and the canary controller."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flywheel.registry.errors import (
    CorruptRegistry,
    RegistryError,
    RolloutConflict,
    UnknownPrompt,
    UnknownVersion,
)
from flywheel.registry.rollout import Rollout, new_rollout, now
from flywheel.registry.store import DirectoryStore, Store
from flywheel.registry.version import AUTHORS, PromptContent, Version, check_name, content_hash

_ROLLOUT = ".rollout.json"
_VERSION = ".v."


def open_registry(spec: str | Path, kubeconfig: str | None = None) -> Registry:
    """``DIR`` (the embedded default) or ``k8s://NAMESPACE/CONFIGMAP`` (in-cluster
    credentials, else ``kubeconfig``, else ~/.kube/config)."""
    text = str(spec)
    if text.startswith("k8s://"):
        from flywheel.registry.configmap_store import ConfigMapStore  # the kubernetes client only when asked for

        return Registry(ConfigMapStore.connect(text.removeprefix("k8s://"), kubeconfig))
    return Registry(DirectoryStore(Path(text)))


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- reading -------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(key[: -len(_ROLLOUT)] for key in self.store.keys() if key.endswith(_ROLLOUT))

    def rollout(self, name: str) -> Rollout:
        data = self.store.read(check_name(name) + _ROLLOUT)
        if data is None:
            raise UnknownPrompt(f"no prompt named {name!r}")
        return Rollout.from_json(data, name + _ROLLOUT)

    def versions(self, name: str) -> list[Version]:
        """Every version of ``name``, oldest first."""
        prefix = check_name(name) + _VERSION
        found = []
        for key in self.store.keys():
            if key.startswith(prefix):
                data = self.store.read(key)
                if data is not None:
                    found.append(Version.from_json(data, key))
        return sorted(found, key=lambda v: (v.created, v.hash))

    def version(self, name: str, ref: str | None = None) -> Version:
        """A version by hash or unique hash prefix; the stable one when ``ref`` is None."""
        if ref is None:
            ref = self.rollout(name).stable
        data = self.store.read(f"{check_name(name)}{_VERSION}{ref}.json")
        if data is not None:
            return Version.from_json(data, name)
        matches = [v for v in self.versions(name) if v.hash.startswith(ref)]
        if len(matches) != 1:
            which = "no" if not matches else "more than one"
            raise UnknownVersion(f"{which} version of {name!r} matches {ref!r}")
        return matches[0]

    # --- writing -------------------------------------------------------------------

    def push(
        self,
        name: str,
        content: PromptContent,
        *,
        author: str = "human",
        parent: str | None = None,
        lineage: Mapping[str, Any] | None = None,
        actor: str = "human",
    ) -> tuple[Version, bool]:
        """Store a version (idempotent: same content, same hash). Returns it and whether it is new.
        The first version of a prompt becomes its stable version."""
        if author not in AUTHORS:
            raise RegistryError(f"author must be one of {', '.join(AUTHORS)}")
        check_name(name)
        digest = content_hash(content)
        existing = self.store.read(f"{name}{_VERSION}{digest}.json")
        if existing is not None:
            return Version.from_json(existing, name), False
        if parent is None:
            parent = self._current_stable(name)
        elif parent not in {v.hash for v in self.versions(name)}:
            parent = self.version(name, parent).hash
        version = Version(name, digest, content, parent, author, now(), dict(lineage or {}))
        self.store.update(f"{name}{_VERSION}{digest}.json", lambda old: None if old else version.to_json())
        self.store.update(
            name + _ROLLOUT,
            lambda old: None if old else new_rollout(name, digest, actor, "first version").to_json(),
        )
        return version, True

    def set_rollout(
        self,
        name: str,
        *,
        stable: str,
        canary: str | None = None,
        weight: float = 0.0,
        actor: str = "human",
        reason: str = "",
        action: str = "set",
        expect_revision: int | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> Rollout:
        stable_hash = self.version(name, stable).hash
        canary_hash = self.version(name, canary).hash if canary else None
        if not 0 <= weight <= 100:
            raise RolloutConflict("weight must be between 0 and 100")
        if canary_hash == stable_hash:
            raise RolloutConflict("the canary is the stable version")
        return self._change(
            name,
            expect_revision,
            lambda r: r.changed(
                action=action,
                actor=actor,
                reason=reason,
                stable=stable_hash,
                canary=canary_hash,
                weight=weight,
                evidence=evidence,
            ),
        )

    def promote(
        self,
        name: str,
        *,
        actor: str = "human",
        reason: str = "",
        expect_revision: int | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> Rollout:
        def promoted(rollout: Rollout) -> Rollout:
            if rollout.canary is None:
                raise RolloutConflict(f"{name} has no canary to promote")
            return rollout.changed(
                action="promote", actor=actor, reason=reason, stable=rollout.canary, evidence=evidence
            )

        return self._change(name, expect_revision, promoted)

    def rollback(
        self,
        name: str,
        *,
        to: str | None = None,
        actor: str = "human",
        reason: str = "",
        expect_revision: int | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> Rollout:
        """Abort the canary; with no canary, go back to the previous stable (or ``to``)."""
        target = self.version(name, to).hash if to else None

        def rolled_back(rollout: Rollout) -> Rollout:
            stable = target or (rollout.stable if rollout.canary else rollout.previous_stable())
            if stable is None:
                raise RolloutConflict(f"{name} has no canary and no earlier stable version to roll back to")
            return rollout.changed(action="rollback", actor=actor, reason=reason, stable=stable, evidence=evidence)

        return self._change(name, expect_revision, rolled_back)

    def _change(self, name: str, expect_revision: int | None, step: Callable[[Rollout], Rollout]) -> Rollout:
        result: list[Rollout] = []

        def apply(old: bytes | None) -> bytes:
            if old is None:
                raise UnknownPrompt(f"no prompt named {name!r}")
            rollout = Rollout.from_json(old, name + _ROLLOUT)
            if expect_revision is not None and rollout.revision != expect_revision:
                raise RolloutConflict(
                    f"{name} changed meanwhile (revision {rollout.revision}, expected {expect_revision})"
                )
            result.append(step(rollout))
            return result[0].to_json()

        self.store.update(check_name(name) + _ROLLOUT, apply)
        return result[0]

    def _current_stable(self, name: str) -> str | None:
        try:
            return self.rollout(name).stable
        except (UnknownPrompt, CorruptRegistry):
            return None
