"""File modes for what is staged in a private temporary folder and then renamed into place."""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def make_readable(path: Path) -> None:
    """Give `path` (and, for a folder, its files) the modes a plain open() or mkdir() would have: mkdtemp
    makes 0700 folders and safetensors writes 0600 files, which a server running as another user
    could not read."""
    mask = _umask()
    path = Path(path)
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.iterdir():
            make_readable(child)
    else:
        os.chmod(path, 0o666 & ~mask)
