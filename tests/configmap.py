"""A ConfigMap volume laid out on disk the way the kubelet's AtomicWriter does it.

``ROOT/..TIMESTAMP/`` holds the files, ``ROOT/..data`` links to it and each key is a
top-level link ``KEY -> ..data/KEY``. An update writes a new timestamped directory,
swaps ``..data`` with one rename, then adds links for new keys, removes links of
dropped keys and deletes the old directory — in that order.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ConfigMapVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._generation = 0
        root.mkdir(parents=True, exist_ok=True)

    def publish(self, source: Path, *, link_new_keys: bool = True) -> None:
        """Project the flat files of ``source`` (dotfiles skipped, as a ConfigMap has none)."""
        self._generation += 1
        payload = self.root / f"..2026_11_22_00_00_{self._generation:02d}.000000001"
        payload.mkdir()
        keys = sorted(p.name for p in source.iterdir() if not p.name.startswith("."))
        for key in keys:
            shutil.copyfile(source / key, payload / key)
        data = self.root / "..data"
        old = Path(os.readlink(data)) if data.is_symlink() else None
        temp = self.root / "..data_tmp"
        temp.symlink_to(payload.name)
        os.replace(temp, data)
        if link_new_keys:
            self.finish(keys, old)

    def finish(self, keys: list[str], old: Path | None = None) -> None:
        for key in keys:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(Path("..data") / key)
        for link in self.root.iterdir():
            if not link.name.startswith(".") and link.name not in keys:
                link.unlink()
        if old is not None:
            shutil.rmtree(self.root / old)
