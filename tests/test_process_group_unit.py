"""dgate/process_group.py on real processes: a process group's members and the Python-backend
shared-memory regions they map, which is what `TritonServer.kill_leftovers` removes after a crash."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from dgate.process_group import SHM_REGION_PREFIX, group_members, shm_regions

# A stand-in stub: maps a region named like python_backend's, then waits (in its own process group).
MAPPER = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096)
region = mmap.mmap(fd, 4096)
print("mapped", flush=True)
time.sleep(60)
"""


def test_group_members_and_the_regions_they_map() -> None:
    region = Path(f"{SHM_REGION_PREFIX}dgate-test-{uuid.uuid4()}")
    child = subprocess.Popen([sys.executable, "-c", MAPPER, str(region)], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "mapped"
        assert group_members(child.pid) == [child.pid]
        assert shm_regions([child.pid]) == {region}
        assert shm_regions([]) == set()
    finally:
        child.kill()
        child.wait()
        region.unlink(missing_ok=True)
    deadline = time.monotonic() + 5
    while group_members(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(child.pid) == []


def test_kill_leftovers_unlinks_the_regions_read_at_ready_even_when_their_stub_is_gone(tmp_path: Path) -> None:
    """A stub polls its parent and exits soon after a killed server, so its region's name is no
    longer in /proc when the supervisor looks: the names read when the server became ready count too."""
    from dgate.triton_server import TritonServer

    region = Path(f"{SHM_REGION_PREFIX}dgate-test-{uuid.uuid4()}")
    region.write_bytes(b"\0" * 4096)  # what the dead stub mapped; nothing maps it now
    server = TritonServer(tmp_path)
    server._process = subprocess.Popen(["true"], start_new_session=True)  # a server that has died
    server._process.wait()
    server._regions = {region}
    try:
        server.kill_leftovers()
        assert not region.exists()
        assert server._regions == set()
    finally:
        region.unlink(missing_ok=True)
