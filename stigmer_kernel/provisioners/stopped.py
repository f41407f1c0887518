"""Stopped sandbox containers kept for reuse (``sandbox_cleanup=false``), by kernel name.

The next kernel of a name restarts its stopped container instead of creating a new one, if it
asks for the same image and workspace. One container per name; the registry is shared by the
provisioner's start threads, hence its lock. It makes no Docker call.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Stopped:
    """A stopped container kept for the next kernel of its name."""

    container_id: str
    workdir: Path  # its kernel directory mount's source: where the next agent's key goes
    image: str
    workspace: str

    @property
    def short(self) -> str:
        return self.container_id[:12]


class StoppedContainers:
    """The stopped containers, one per kernel name."""

    def __init__(self) -> None:
        self._by_name: dict[str, Stopped] = {}
        self._lock = threading.Lock()

    def keep(self, name: str, entry: Stopped) -> Stopped | None:
        """Remember ``entry`` for kernel ``name``; the one it replaces (to remove), if another."""
        with self._lock:
            older = self._by_name.pop(name, None)
            self._by_name[name] = entry
        return older if older is not None and older.container_id != entry.container_id else None

    def take(self, name: str, image: str, workspace: str) -> Stopped | None:
        """The stopped container of ``name``, if it has this image and workspace (it is then
        no longer kept); another image or workspace gets a new container, the old one stays."""
        with self._lock:
            entry = self._by_name.get(name)
            if entry is None or (entry.image, entry.workspace) != (image, workspace):
                return None
            del self._by_name[name]
        return entry

    def clear(self) -> None:
        with self._lock:
            self._by_name.clear()
