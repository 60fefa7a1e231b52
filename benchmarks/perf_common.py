"""Timing, fitting and machine helpers shared by the `make bench` sections."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["child_peak_rss", "linear_fit", "machine", "summary", "timed"]


def summary(values: list[float]) -> dict[str, float]:
    """Return the median, min and max of repeated measurements, and their count."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "repeats": len(values),
    }


def timed(run: Callable[[], object]) -> float:
    """Return the wall-clock seconds of one call of `run`."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares fit y = intercept + slope * x, with the coefficient of determination."""
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    predicted = intercept + slope * np.asarray(x, float)
    residual = float(np.sum((np.asarray(y) - predicted) ** 2))
    total = float(np.sum((np.asarray(y) - np.mean(y)) ** 2))
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": 1.0 - residual / total if total > 0 else 1.0,
    }


def child_peak_rss(command: list[str], env: dict[str, str], log_path: Path) -> tuple[int, float]:
    """Run `command` and return (its peak resident memory in bytes, wall seconds).

    The peak comes from the kernel's accounting of that one child (`os.wait4`), so memory held
    by this process does not count. Output goes to `log_path`; a failed run raises.
    """
    start = time.perf_counter()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(
            f"{' '.join(command)} failed with exit code {process.returncode}:\n{tail}"
        )
    # Linux reports ru_maxrss in KiB.
    return usage.ru_maxrss * 1024, seconds


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine() -> dict[str, object]:
    """Describe the machine: CPU, cores, memory, load, and the library versions timed here."""
    import ray

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average_1min": os.getloadavg()[0],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "platform": platform.platform(),
    }
