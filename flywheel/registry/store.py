"""Where registry files live: flat keys, atomic writes, a fingerprint to notice changes.

Keys are flat file names (``NAME.rollout.json``, ``NAME.v.HASH.json``) so that the
same files work as the keys of a Kubernetes ConfigMap, and a ConfigMap mounted as a
directory (each key a symlink into ``..data``, swapped atomically) reads unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Protocol

from flywheel.registry.errors import RegistryError

Change = Callable[[bytes | None], bytes | None]  # old content (None: absent) → new (None: leave as is)


class Store(Protocol):
    def keys(self) -> list[str]: ...

    def read(self, key: str) -> bytes | None: ...

    def update(self, key: str, change: Change) -> bytes | None:
        """Read-modify-write ``key`` with no other writer in between; returns what was written."""
        ...

    def fingerprint(self) -> Hashable:
        """Changes whenever any key's content may have changed; cheap enough to poll each second."""
        ...


class DirectoryStore:
    """A directory of flat files. Writers hold an flock and replace files by rename, so
    readers never see a half-written file and concurrent writers never lose an update."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def _files(self) -> Path:
        # A mounted ConfigMap: read through ``..data``, which the kubelet swaps in one
        # rename, so a new rollout and the new version it names appear together (the
        # top-level links to new keys are only added after the swap).
        data = self.root / "..data"
        return data if data.is_dir() else self.root

    def keys(self) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(self._files) if not entry.name.startswith("."))
        except FileNotFoundError:
            return []

    def read(self, key: str) -> bytes | None:
        try:
            return (self._files / key).read_bytes()
        except FileNotFoundError:
            return None

    def update(self, key: str, change: Change) -> bytes | None:
        if self._files != self.root:
            raise RegistryError(
                f"registry {self.root} is a mounted ConfigMap (read-only); write through k8s://NAMESPACE/CONFIGMAP"
            )
        with self._locked():
            new = change(self.read(key))
            if new is not None:
                self._replace(key, new)
            return new

    def fingerprint(self) -> Hashable:
        stats: list[tuple[str, int, int, int]] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return ()
        for entry in entries:
            if entry.name.startswith(".") and entry.name != "..data":
                continue
            with contextlib.suppress(FileNotFoundError):  # removed between scandir and stat
                st = entry.stat()  # follows the ConfigMap's symlinks
                stats.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
        data_link = self.root / "..data"
        target = os.readlink(data_link) if data_link.is_symlink() else ""
        return (target, tuple(sorted(stats)))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / ".lock", "a+b")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise RegistryError(
                f"registry {self.root} is not writable ({exc.strerror}); "
                "a ConfigMap mount is read-only: write through k8s://NAMESPACE/CONFIGMAP"
            ) from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _replace(self, key: str, data: bytes) -> None:
        final = self.root / key
        temp = self.root / f".{key}.{secrets.token_hex(4)}.tmp"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise RegistryError(f"cannot write {final}: {exc.strerror}") from exc
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
