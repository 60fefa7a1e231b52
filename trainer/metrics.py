"""Metric loggers: a CSV file and TensorBoard, behind one small interface."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["MetricLogger"]


class MetricLogger:
    """Write scalar metrics with `train/` or `eval/` keys to `metrics.csv` and TensorBoard.

    The CSV has one row per call in long format (step, key, value), so new keys never break
    its header.
    """

    def __init__(self, folder: str | Path, tensorboard: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "metrics.csv"
        new = not path.exists()
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "key", "value"])
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.folder / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._csv.writerow([step, key, f"{float(value):.6g}"])
            if self._tb is not None:
                self._tb.add_scalar(key, float(value), step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
