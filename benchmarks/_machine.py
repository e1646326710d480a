"""What every benchmark prints about the machine it ran on (imported from the scripts' folder)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `0.52 0.61 0.70`."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def process_tree_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) used so far by a process and each of its descendants, by pid,
    with the command line they run (Linux's /proc; empty where there is none). A process that
    ends between two readings is left out of the second."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found: dict[int, tuple[str, float]] = {}
    waiting = [pid]
    while waiting:
        current = waiting.pop()
        proc = Path(f"/proc/{current}")
        try:
            # the fields after the command's name, which is in parentheses and may hold spaces
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            tasks = list((proc / "task").iterdir())
        except (OSError, IndexError, ValueError):
            continue  # the process ended
        found[current] = (command, (int(fields[11]) + int(fields[12])) / tick)  # utime, stime
        for task in tasks:
            try:
                waiting.extend(int(child) for child in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue  # a thread that ended meanwhile: the process's other threads still count
    return found
