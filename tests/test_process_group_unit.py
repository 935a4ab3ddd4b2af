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
