"""The memory footprint of a running tritonserver process tree, per Triton model.

Each Python-backend model instance is its own `triton_python_backend_stub` process with its own
interpreter, so a repository's host memory is the sum over the whole tree, not the server's RSS.
PSS (proportional set size) is the figure to add up: pages shared between processes (the libraries
every stub maps, the shared-memory regions the server and a stub both map) count once in the total,
split between the sharers, where summed RSS would count them once per process.

Linux only: everything comes from /proc, so no dependency is needed.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
STUB_EXECUTABLE = "triton_python_backend_stub"
# Triton names an instance "<group>_<index>", and a group it names itself "<model>_<group index>".
_INSTANCE_SUFFIX = re.compile(r"(_\d+){1,2}$")


def _read(path: Path) -> str | None:
    """The file's text, or None when its process has gone (the tree changes while we walk it)."""
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None


def parent_pids(proc: Path = PROC) -> dict[int, int]:
    """pid -> ppid of every process now, from /proc/*/stat (one pass; works without CONFIG_PROC_CHILDREN)."""
    parents: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat")
        if not stat:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 2:
            parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(pid: int, proc: Path = PROC) -> list[int]:
    """pid and all its live descendants, parents before children; [] when pid itself is gone."""
    parents = parent_pids(proc)
    if pid not in parents:
        return []
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    tree: list[int] = []
    queue = deque([pid])
    while queue:
        current = queue.popleft()
        tree.append(current)
        queue.extend(sorted(children.get(current, ())))
    return tree


def _parse_smaps(text: str) -> dict[str, int]:
    """Summed "Key: N kB" lines of smaps/smaps_rollup, in bytes (the kernel's kB are KiB)."""
    totals: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            totals[key] = totals.get(key, 0) + int(parts[0]) * 1024
    return totals


def smaps_rollup(pid: int, proc: Path = PROC) -> dict[str, int]:
    """The process's memory counters in bytes ({} when it has gone, or is a zombie).

    /proc/<pid>/smaps_rollup is one cheap read (Linux 4.14+); older kernels get the per-mapping
    /proc/<pid>/smaps summed. Reading another user's process needs ptrace access: that PermissionError
    is raised, not hidden as 0, since a silent 0 would understate the footprint.
    """
    text = _read(proc / str(pid) / "smaps_rollup")
    if text is None and (proc / str(pid)).is_dir():
        text = _read(proc / str(pid) / "smaps")
    return _parse_smaps(text) if text else {}


def pss_bytes(pid: int, proc: Path = PROC) -> int:
    """Proportional set size: 0 for a process that has gone."""
    return smaps_rollup(pid, proc).get("Pss", 0)


def rss_bytes(pid: int, proc: Path = PROC) -> int:
    """Resident set size (shared pages counted in full): 0 for a process that has gone."""
    return smaps_rollup(pid, proc).get("Rss", 0)


def cmdline(pid: int, proc: Path = PROC) -> list[str]:
    """The process's argv ([] when it has gone, or for a kernel thread or zombie)."""
    raw = _read(proc / str(pid) / "cmdline")
    return raw.rstrip("\0").split("\0") if raw else []


def _comm(pid: int, proc: Path) -> str:
    return (_read(proc / str(pid) / "comm") or "").strip()


def stub_instance(argv: Sequence[str]) -> str | None:
    """The instance name a Python-backend stub serves (its 9th argument), None for any other process.

    python_backend's StubLauncher starts `bash -c "exec <stub> <model_path> <shm region> <shm default
    size> <shm growth size> <parent pid> <backend dir> <ipc handle> <instance name> <runtime modeldir>"`,
    so argv[8] is the instance ("tiny-sd_denoiser_0_3"), or the model name for the short-lived
    auto-complete stub that reads a model's config at load.
    """
    if len(argv) < 9 or os.path.basename(argv[0]) != STUB_EXECUTABLE:
        return None
    return argv[8]


def stub_model(argv: Sequence[str]) -> str | None:
    """The Triton model a Python-backend stub serves, from its command line; None for other processes.

    The model path (argv[1]) is <model repository>/<model>/<version>/model.py, so the model is its
    third-last part. A repository that Triton localised into a temporary folder (cloud storage) loses
    that name, so unless the instance name starts with it, the instance name without its
    "_<group>_<index>" suffix is used instead.
    """
    instance = stub_instance(argv)
    if instance is None:
        return None
    parts = Path(argv[1]).parts
    model = parts[-3] if len(parts) >= 3 else ""
    if model and (instance == model or instance.startswith(model + "_")):
        return model
    return _INSTANCE_SUFFIX.sub("", instance) or instance


@dataclass(frozen=True)
class ProcessMemory:
    """One process of the tree: model is the Triton model of a Python-backend stub, None otherwise."""

    pid: int
    name: str  # the executable's file name (comm truncates it to 15 characters)
    model: str | None
    pss: int  # bytes
    rss: int  # bytes
    instance: str | None = None  # the stub's instance name, e.g. "tiny-sd_denoiser_0_3"

    @property
    def group(self) -> str:
        """The breakdown row: the model, or "(name)" for the server and any other non-stub process."""
        return self.model if self.model is not None else f"({self.name})"


def process_memory(pid: int, proc: Path = PROC) -> ProcessMemory | None:
    """One process's measurement; None when it has gone before it could be read."""
    argv = cmdline(pid, proc)
    name = os.path.basename(argv[0]) if argv and argv[0] else _comm(pid, proc)
    counters = smaps_rollup(pid, proc)
    if not name and not counters:
        return None
    return ProcessMemory(pid=pid, name=name, model=stub_model(argv), pss=counters.get("Pss", 0),
                         rss=counters.get("Rss", 0), instance=stub_instance(argv))


@dataclass(frozen=True)
class GroupMemory:
    """The processes of one model (or the server itself), summed."""

    group: str
    processes: int
    pss: int
    rss: int

    @property
    def pss_per_process(self) -> float:
        return self.pss / self.processes if self.processes else 0.0


@dataclass(frozen=True)
class Footprint:
    """A snapshot of a process tree's memory."""

    root: int
    processes: tuple[ProcessMemory, ...]

    @property
    def pss(self) -> int:
        return sum(p.pss for p in self.processes)

    @property
    def rss(self) -> int:
        """Summed RSS: overstates the real footprint (shared pages counted per process); for comparison."""
        return sum(p.rss for p in self.processes)

    @property
    def count(self) -> int:
        return len(self.processes)

    def by_model(self) -> list[GroupMemory]:
        """Per model (and the server process): PSS and process counts, largest PSS first."""
        groups: dict[str, list[ProcessMemory]] = {}
        for p in self.processes:
            groups.setdefault(p.group, []).append(p)
        rows = [GroupMemory(g, len(ps), sum(p.pss for p in ps), sum(p.rss for p in ps)) for g, ps in groups.items()]
        return sorted(rows, key=lambda r: (-r.pss, r.group))

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, for the bench report."""
        return {
            "root_pid": self.root, "processes": self.count, "pss_bytes": self.pss, "rss_bytes": self.rss,
            "by_model": [{"model": r.group, "processes": r.processes, "pss_bytes": r.pss, "rss_bytes": r.rss}
                         for r in self.by_model()],
        }


def footprint_of(pids: Iterable[int], root: int, proc: Path = PROC) -> Footprint:
    """Measure the given processes, leaving out those that have gone meanwhile."""
    measured = (process_memory(pid, proc) for pid in pids)
    return Footprint(root=root, processes=tuple(m for m in measured if m is not None))


def tree_footprint(pid: int, proc: Path = PROC) -> Footprint:
    """The footprint of pid (a tritonserver) and all its descendants (its Python-backend stubs)."""
    return footprint_of(process_tree(pid, proc), pid, proc)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def format_footprint(fp: Footprint, title: str = "Triton tree") -> str:
    """A compact table per model (decimal MB, largest PSS first) and a total line in GB."""
    rows = fp.by_model()
    width = max([len("model"), *(len(r.group) for r in rows)])
    lines = [f"{'model':<{width}}  {'procs':>5}  {'PSS MB':>9}  {'MB/proc':>8}  {'RSS MB':>9}"]
    for r in rows:
        lines.append(f"{r.group:<{width}}  {r.processes:>5}  {_mb(r.pss):>9}  {_mb(r.pss_per_process):>8}"
                     f"  {_mb(r.rss):>9}")
    noun = "process" if fp.count == 1 else "processes"
    lines.append(f"{title}: {fp.pss / 1e9:.2f} GB PSS in {fp.count} {noun} (summed RSS {fp.rss / 1e9:.2f} GB)")
    return "\n".join(lines)
