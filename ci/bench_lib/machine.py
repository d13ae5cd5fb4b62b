"""Facts about the machine, the tools and the commit, stored with the
results so numbers from different runs can be compared."""

import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path


def describe_machine() -> dict:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpus_online": os.cpu_count(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "memory_total_bytes": memory_total(),
        "cgroup": cgroup_layout(),
    }


def busy_fraction(window: float = 0.5) -> float:
    """Measure the share of CPU time, over `window` seconds, that the
    machine spent busy (neither idle nor waiting for I/O), from /proc/stat.

    Taken while the benchmark runs nothing, it shows other work on the
    machine. The load average cannot show it here: on the benchmark's VM it
    stayed near 4.7 while vmstat reported the CPUs 100% idle.
    """
    idle_before, total_before = cpu_counters()
    time.sleep(window)
    idle_after, total_after = cpu_counters()
    total = total_after - total_before
    if total <= 0:
        return 0.0
    return 1.0 - (idle_after - idle_before) / total


def cpu_counters() -> tuple[int, int]:
    """Return the idle (idle + iowait) and total jiffies of all CPUs."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    # Fields after "cpu": user nice system idle iowait irq softirq steal,
    # then guest times that user already contains.
    counters = [int(value) for value in fields[1:9]]
    return counters[3] + counters[4], sum(counters)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown (no `model name` in /proc/cpuinfo)"


def memory_total() -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def cgroup_layout() -> dict:
    """Classify the cgroup mounts as v1, v2 or hybrid (v1 controllers with a
    cgroup2 hierarchy mounted beside them), from /proc/self/mountinfo."""
    v1_controllers = []
    v2_mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Fields after the " - " separator: filesystem type, source, super options.
        mount_fields, _, fs_fields = line.partition(" - ")
        fs_type, _source, super_options = fs_fields.split(" ", 2)
        mount_point = mount_fields.split(" ")[4]
        if fs_type == "cgroup2":
            v2_mounts.append(mount_point)
        elif fs_type == "cgroup":
            v1_controllers += [
                o for o in super_options.split(",") if o not in ("rw", "ro")
            ]

    if v1_controllers and v2_mounts:
        kind = "hybrid"
    elif v1_controllers:
        kind = "v1"
    elif v2_mounts:
        kind = "v2"
    else:
        kind = "none"
    return {
        "kind": kind,
        "v1_controllers": sorted(set(v1_controllers)),
        "v2_mounts": v2_mounts,
    }


def tool_versions(runner: Path) -> dict:
    commands = {
        "rustc": ["rustc", "--version"],
        "cargo": ["cargo", "--version"],
        "cargo-nextest": ["cargo", "nextest", "--version"],
        "bwrap": ["bwrap", "--version"],
        "cargo-sandbox-test": [str(runner), "--version"],
    }
    versions = {}
    for name, command in commands.items():
        versions[name] = first_output_line(command)
    return versions


def first_output_line(command: list[str]) -> str | None:
    """Return the first line the command prints, or None if it cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        return None
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return result.stdout.strip().splitlines()[0]


def describe_commit(repository: Path) -> dict:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repository, capture_output=True, text=True
    )
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repository, capture_output=True, text=True
    )
    return {
        "commit": head.stdout.strip() if head.returncode == 0 else None,
        # Uncommitted changes mean the commit alone does not say what ran.
        "work_tree_dirty": (
            bool(status.stdout.strip()) if status.returncode == 0 else None
        ),
    }


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
