"""Video job outputs (MP4, thumbnail, spritesheet) as files in one directory, shared by the workers
that write them and the routers that serve them (a volume every replica mounts).

A file appears under its name only once it is whole: it is written to a temporary file in the same
directory, fsynced, and renamed over the name (`os.replace` is atomic within a filesystem), so a
reader on another replica never streams half a video. The calls block: run large ones through
`asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

# One path component of plain characters. A leading dot is refused as well, which keeps the hidden
# temporary files out of reach of a name.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def check_asset_name(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"asset name {name!r}: use 1-200 of [A-Za-z0-9._-], not starting with '.', no '..'")
    return name


class AssetStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.root / check_asset_name(name)

    def write(self, name: str, data: bytes) -> Path:
        """Atomically (see the module docstring); an existing file of that name is replaced."""
        target = self._path(name)
        fd, temporary = tempfile.mkstemp(dir=self.root, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fchmod(file.fileno(), 0o644)  # mkstemp makes 0600; other replicas may run as other users
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._sync_directory()  # the rename itself survives a power cut only once the directory is synced
        return target

    def _sync_directory(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def path(self, name: str) -> Path | None:
        """The file to serve (e.g. with FileResponse), or None if there is none."""
        target = self._path(name)
        return target if target.is_file() else None

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        """Missing is fine: expiry and DELETE may race, and either may run twice."""
        self._path(name).unlink(missing_ok=True)
