"""What is left of a process group, read from /proc (Linux): its live members and the Python-backend
shared-memory regions they map.

A tritonserver leads its own process group, its Python-backend stubs are in it, and each stub shares a
region `/dev/shm/triton_python_backend_shm_region_<uuid>` with the server. The server unlinks the
regions when it stops; a server killed with SIGKILL unlinks nothing, and the regions (MBs each, one or
more a stub) stay in /dev/shm until reboot. The stubs still map them, so their names can be read from
their /proc/<pid>/maps before they are killed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SHM_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for pid in pids():
        fields = _stat_fields(pid)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(pid)
    return members


def shm_regions(members: Iterable[int]) -> set[Path]:
    """The Python-backend shared-memory regions these processes map."""
    regions: set[Path] = set()
    for pid in members:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith(SHM_REGION_PREFIX):
                regions.add(Path(parts[5].removesuffix(" (deleted)")))
    return regions
