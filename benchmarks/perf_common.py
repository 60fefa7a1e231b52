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


def _vm_hwm_bytes(pid: int) -> int | None:
    """Return the peak resident memory of process `pid`'s address space, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def child_peak_rss(
    command: list[str], env: dict[str, str], log_path: Path, poll_seconds: float = 0.1
) -> tuple[int, float]:
    """Run `command` and return (its peak resident memory in bytes, wall seconds).

    The peak is the child's VmHWM in /proc, read until it exits. `ru_maxrss` from `wait4`
    would be wrong: Linux carries a forked child's high-water mark, which starts at this
    process's size, across `exec`. Only the last `poll_seconds` before exit go unobserved.
    Output goes to `log_path`. A failed run raises.
    """
    start = time.perf_counter()
    peak = 0
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        while process.poll() is None:
            peak = max(peak, _vm_hwm_bytes(process.pid) or 0)
            time.sleep(poll_seconds)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(
            f"{' '.join(command)} failed with exit code {process.returncode}:\n{tail}"
        )
    return peak, seconds


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
