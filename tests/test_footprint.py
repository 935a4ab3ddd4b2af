"""dgate.bench.footprint: the PSS of a process tree, read from /proc, and the stub command-line parser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dgate.bench.footprint import (
    Footprint,
    ProcessMemory,
    cmdline,
    format_footprint,
    process_tree,
    pss_bytes,
    rss_bytes,
    smaps_rollup,
    stub_instance,
    stub_model,
    tree_footprint,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")

# The NGC image's backend folder; `dgate triton` uses a copy under the user's cache, same layout.
BACKEND = "/opt/tritonserver/backends/python"
# argv of a real stub, read from /proc/<pid>/cmdline of tritonserver 2.51 (nvidia-pytriton 0.7.0) serving
# the exported tiny-sd repository (folders renamed to neutral ones): <stub> <model path> <shm region>
# <shm default size> <shm growth size> <server pid> <backend dir> <ipc handle> <instance name> <runtime modeldir>.
REAL_STUB = [f"{BACKEND}/triton_python_backend_stub", "/models/tiny-sd_postprocess/1/model.py",
             "triton_python_backend_shm_region_19c9032e-9a48-4ab1-8c53-b750dffc4d64", "1048576", "1048576", "3815",
             BACKEND, "336", "tiny-sd_postprocess_0_1", "DEFAULT"]

# A chain of sleeping Pythons, each starting the next (argv: this code, depth), each printing the pids
# from itself down: three levels test the walk below the first generation.
CHAIN = ("import os, subprocess, sys, time\n"
         "code, depth = sys.argv[1], int(sys.argv[2])\n"
         "below = []\n"
         "if depth > 1:\n"
         "    p = subprocess.Popen([sys.executable, '-c', code, code, str(depth - 1)],\n"
         "                         stdout=subprocess.PIPE, text=True)\n"
         "    below = p.stdout.readline().split()\n"
         "print(os.getpid(), *below, flush=True)\n"
         "time.sleep(60)\n")


def stub_argv(model_path: str, instance: str) -> list[str]:
    return [*REAL_STUB[:1], model_path, *REAL_STUB[2:8], instance, "DEFAULT"]


@pytest.fixture
def tree() -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """Child, grandchild, great-grandchild, in their own process group so the teardown kills them all."""
    proc = subprocess.Popen([sys.executable, "-c", CHAIN, CHAIN, "3"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        pids = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(pids) == 3 and pids[0] == proc.pid
        yield proc, pids
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def test_stub_model_from_real_cmdline() -> None:
    assert stub_model(REAL_STUB) == "tiny-sd_postprocess"
    assert stub_instance(REAL_STUB) == "tiny-sd_postprocess_0_1"


def test_stub_model_variants() -> None:
    # the auto-complete stub that reads a config at load is named after the model itself
    assert stub_model(stub_argv("/repo/tiny-sd_unet/1/model.py", "tiny-sd_unet")) == "tiny-sd_unet"
    # a model whose name ends in digits keeps them: the path, not the instance suffix, decides
    assert stub_model(stub_argv("/repo/sd_15_2/3/model.py", "sd_15_2_0_7")) == "sd_15_2"
    # a repository localised into a temporary folder: the name comes from the instance
    assert stub_model(stub_argv("/tmp/folderXyZ/1/model.py", "tiny-sd_denoiser_0_3")) == "tiny-sd_denoiser"
    # a named instance group "<group>_<index>"
    assert stub_model(stub_argv("/tmp/folderXyZ/1/model.py", "fast_2")) == "fast"


@pytest.mark.parametrize("argv", [
    [],
    ["/usr/bin/tritonserver", "--model-repository=/repo"],
    REAL_STUB[:8],  # too short to hold an instance name
    ["bash", "-c", "exec " + " ".join(REAL_STUB)],  # the launcher's shell before its exec
    ["/x/not_a_stub", *REAL_STUB[1:]],
])
def test_stub_model_other_processes(argv: list[str]) -> None:
    assert stub_model(argv) is None
    assert stub_instance(argv) is None


def test_own_process() -> None:
    counters = smaps_rollup(os.getpid())
    assert 0 < counters["Pss"] <= counters["Rss"]
    assert 0 < pss_bytes(os.getpid()) <= rss_bytes(os.getpid())
    assert "python" in Path(cmdline(os.getpid())[0]).name
    assert process_tree(os.getpid())[0] == os.getpid()


def test_vanished_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free (and not reused this quickly on a sane system)
    assert pss_bytes(proc.pid) == 0 and rss_bytes(proc.pid) == 0
    assert smaps_rollup(proc.pid) == {}
    assert cmdline(proc.pid) == []
    assert process_tree(proc.pid) == []
    assert tree_footprint(proc.pid).count == 0


def test_tree(tree: tuple[subprocess.Popen[str], list[int]]) -> None:
    proc, pids = tree
    assert process_tree(proc.pid) == pids  # parents before children
    assert process_tree(pids[1]) == pids[1:]

    fp = tree_footprint(proc.pid)
    assert fp.root == proc.pid and fp.count == 3
    assert [p.pid for p in fp.processes] == pids
    assert all(0 < p.pss <= p.rss for p in fp.processes)
    assert 0 < fp.pss <= fp.rss
    assert {p.name for p in fp.processes} == {Path(sys.executable).name}
    assert all(p.model is None and p.instance is None for p in fp.processes)
    rows = fp.by_model()
    assert [(r.group, r.processes, r.pss) for r in rows] == [(f"({Path(sys.executable).name})", 3, fp.pss)]

    ours = tree_footprint(os.getpid())  # this test process on top
    assert ours.processes[0].pid == os.getpid()
    assert set(pids) <= {p.pid for p in ours.processes}


def test_tree_after_kill(tree: tuple[subprocess.Popen[str], list[int]]) -> None:
    proc, pids = tree
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert process_tree(proc.pid) == []
    # SIGKILL ends the others asynchronously; then they are gone, or zombies until whoever inherited them
    # reaps them: no memory either way.
    deadline = time.monotonic() + 10
    while any(smaps_rollup(pid) for pid in pids[1:]):
        assert time.monotonic() < deadline, "the killed processes still map memory"
        time.sleep(0.01)
    assert all(pss_bytes(pid) == 0 and rss_bytes(pid) == 0 for pid in pids)


def test_zombie_counts_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        fp = tree_footprint(proc.pid)
        assert fp.count == 1 and fp.pss == 0 and fp.rss == 0
        assert "python" in fp.processes[0].name
    finally:
        proc.wait()


def test_breakdown_and_format() -> None:
    mb = 1_000_000
    stub = "triton_python_backend_stub"
    processes = [ProcessMemory(10, "tritonserver", None, 40 * mb, 45 * mb)]
    processes += [ProcessMemory(11 + i, stub, "sd_denoiser", 236 * mb, 300 * mb, f"sd_denoiser_0_{i}")
                  for i in range(4)]
    processes += [ProcessMemory(20, stub, "sd_unet", 2_000 * mb, 2_144 * mb, "sd_unet_0_0")]
    fp = Footprint(root=10, processes=tuple(processes))
    assert fp.count == 6 and fp.pss == 2_984 * mb
    rows = fp.by_model()
    assert [(r.group, r.processes, r.pss) for r in rows] == [
        ("sd_unet", 1, 2_000 * mb), ("sd_denoiser", 4, 944 * mb), ("(tritonserver)", 1, 40 * mb)]
    assert rows[1].pss_per_process == 236 * mb

    text = format_footprint(fp)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "procs", "PSS", "MB", "MB/proc", "RSS", "MB"]
    assert lines[1].split() == ["sd_unet", "1", "2000.0", "2000.0", "2144.0"]
    assert lines[2].split() == ["sd_denoiser", "4", "944.0", "236.0", "1200.0"]
    assert lines[3].split() == ["(tritonserver)", "1", "40.0", "40.0", "45.0"]
    assert lines[-1] == "Triton tree: 2.98 GB PSS in 6 processes (summed RSS 3.39 GB)"

    d = fp.as_dict()
    assert d["processes"] == 6 and d["pss_bytes"] == 2_984 * mb
    assert d["by_model"][0] == {"model": "sd_unet", "processes": 1, "pss_bytes": 2_000 * mb, "rss_bytes": 2_144 * mb}


def test_format_empty() -> None:
    assert format_footprint(Footprint(root=1, processes=())).splitlines()[-1] == (
        "Triton tree: 0.00 GB PSS in 0 processes (summed RSS 0.00 GB)")


def test_fake_proc(tmp_path: Path) -> None:
    """A /proc tree written by hand: comm with spaces and parentheses, a stub, and an old kernel's smaps."""
    def add(pid: int, ppid: int, comm: str, argv: list[str], smaps: str, rollup: bool = True) -> None:
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560\n")
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_text("\0".join(argv) + "\0")
        (d / "smaps_rollup" if rollup else d / "smaps").write_text(smaps)

    add(100, 1, "tritonserver", ["/opt/tritonserver/bin/tritonserver", "--model-repository=/models"],
        "00400000-ffffffff ---p 00000000 00:00 0 [rollup]\nRss:  2048 kB\nPss:  1024 kB\nPss_Anon:  512 kB\n")
    add(101, 100, "odd) name (x", ["/bin/odd"], "Rss: 10 kB\nPss: 4 kB\n")
    add(102, 100, "triton_python_b", stub_argv("/models/unet/1/model.py", "unet_0_0"),
        "7f00-7f01 r-xp 0 00:00 0 /lib.so\nRss: 100 kB\nPss: 50 kB\n7f01-7f02 rw-p 0 00:00 0\nRss: 20 kB\nPss: 20 kB\n",
        rollup=False)
    add(103, 101, "sleep", ["sleep", "9"], "Rss: 8 kB\nPss: 2 kB\n")
    add(200, 1, "other", ["other"], "Rss: 8 kB\nPss: 8 kB\n")
    (tmp_path / "self").mkdir()  # non-numeric entries are ignored

    assert process_tree(100, tmp_path) == [100, 101, 102, 103]
    assert pss_bytes(102, tmp_path) == 70 * 1024  # summed over the mappings of smaps
    fp = tree_footprint(100, tmp_path)
    assert fp.pss == (1024 + 4 + 70 + 2) * 1024
    assert [(p.name, p.model) for p in fp.processes] == [
        ("tritonserver", None), ("odd", None), ("triton_python_backend_stub", "unet"), ("sleep", None)]
    assert [r.group for r in fp.by_model()] == ["(tritonserver)", "unet", "(odd)", "(sleep)"]
