"""WILDS RxRx1 and Camelyon17 read from their v1.0 folders, with the official WILDS splits.

Both readers take `dataset.root` as either the data set folder (`rxrx1_v1.0`, `camelyon17_v1.0`)
or its parent, which is what the `wilds` package calls `root_dir`. Only `metadata.csv` and the
image folders are read; the `wilds` package is not needed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.datasets.base import DatasetReader, SourceRecord
from pipeline.datasets.common import (
    check_listed_files,
    digest_entries,
    find_data_folder,
    raise_layout_problems,
    read_metadata_csv,
)

__all__ = ["Camelyon17", "RxRx1"]

log = logging.getLogger(__name__)

KEY_PART = re.compile(r"[A-Za-z0-9_\-]+")


def _check_wilds_layout(reader, image_folder: str) -> Path:
    """Check a WILDS release folder for its image folder and metadata.csv; return the CSV path."""
    problems = []
    if not (reader.folder / image_folder).is_dir():
        problems.append(f"missing folder {image_folder}/")
    metadata = reader.folder / "metadata.csv"
    if not metadata.is_file():
        problems.append("missing file metadata.csv")
    raise_layout_problems(reader.name, reader.folder, problems, reader.FIX)
    return metadata


class RxRx1(DatasetReader):
    """WILDS RxRx1 v1.0: fluorescence microscopy of siRNA-treated cells, 1,139 siRNA classes.

    Splits follow the WILDS `official` scheme. `train` is site 1 of the rows whose `dataset`
    column is `train`, and `id_test` is site 2 of those rows. `val` and `test` are all rows
    whose `dataset` is `val` or `test`, both sites. The domain is the experiment (batch), for
    example `HEPG2-08`; the label is `sirna_id`.
    """

    name = "rxrx1"
    metric = "accuracy"
    FOLDER = "rxrx1_v1.0"
    COLUMNS = ("experiment", "plate", "well", "site", "dataset", "sirna_id")
    NUM_CLASSES = 1139
    FIX = (
        "download rxrx1_v1.0 from the WILDS release (see docs/datasets.md) and set "
        "dataset.root to that folder or to its parent"
    )

    def __init__(self, root: str, options=None):
        super().__init__(root, options)
        self.folder = find_data_folder(root, self.FOLDER, "metadata.csv", self.name)
        metadata = _check_wilds_layout(self, "images")

        frame = read_metadata_csv(
            metadata, self.COLUMNS, self.name, self.FIX, dtype={"experiment": str, "well": str}
        )
        self._check_values(frame)
        paths = [
            f"images/{e}/Plate{p}/{w}_s{s}.png"
            for e, p, w, s in frame[["experiment", "plate", "well", "site"]].itertuples(index=False)
        ]
        keys = [
            f"{e}_{p}_{w}_{s}"
            for e, p, w, s in frame[["experiment", "plate", "well", "site"]].itertuples(index=False)
        ]
        problems, self._sizes = check_listed_files(self.folder, paths, "metadata.csv")
        raise_layout_problems(self.name, self.folder, problems, self.FIX)
        self._frame = frame.assign(split=self._official_splits(frame), path=paths, key=keys)
        self.classes = self._class_names(frame)
        self._metadata_bytes = metadata.read_bytes()

    def _check_values(self, frame: pd.DataFrame) -> None:
        """Check the split, site, label and key values."""
        problems = []
        bad_sets = sorted(set(frame["dataset"]) - {"train", "val", "test"})
        if bad_sets:
            problems.append(
                f"metadata.csv: column 'dataset' has values {bad_sets}; expected train, val or test"
            )
        bad_sites = sorted(set(frame["site"].tolist()) - {1, 2})
        if bad_sites:
            problems.append(f"metadata.csv: column 'site' has values {bad_sites}; expected 1 or 2")
        if not pd.api.types.is_integer_dtype(frame["sirna_id"]) or (frame["sirna_id"] < 0).any():
            problems.append("metadata.csv: column 'sirna_id' must hold integers >= 0")
        for column in ("experiment", "well"):
            bad = sorted(v for v in set(frame[column]) if not KEY_PART.fullmatch(str(v)))
            if bad:
                problems.append(
                    f"metadata.csv: column {column!r} has values {bad[:5]} with "
                    "characters other than letters, digits, '_' and '-'"
                )
        duplicated = frame.duplicated(["experiment", "plate", "well", "site"])
        if duplicated.any():
            problems.append(
                f"metadata.csv: rows {frame.index[duplicated].tolist()[:5]} repeat an "
                "(experiment, plate, well, site) of an earlier row"
            )
        raise_layout_problems(self.name, self.folder, problems, self.FIX)

    @staticmethod
    def _official_splits(frame: pd.DataFrame) -> np.ndarray:
        """Apply the WILDS `official` split rule to every metadata row."""
        split = frame["dataset"].to_numpy(dtype=object).copy()
        train_rows = frame["dataset"] == "train"
        split[(train_rows & (frame["site"] == 2)).to_numpy()] = "id_test"
        return split

    def _class_names(self, frame: pd.DataFrame) -> list[str]:
        """Name class i after the `sirna` value of the rows whose `sirna_id` is i."""
        num_classes = int(frame["sirna_id"].max()) + 1
        names = [f"sirna_id_{i}" for i in range(num_classes)]
        if "sirna" in frame.columns:
            pairs = frame[["sirna_id", "sirna"]].drop_duplicates("sirna_id")
            for sirna_id, sirna in pairs.itertuples(index=False):
                names[int(sirna_id)] = str(sirna)
        if num_classes != self.NUM_CLASSES:
            # WILDS also sets the class count to max(sirna_id) + 1.
            log.info(
                "%s: %d classes (max sirna_id + 1); the full release has %d",
                self.name,
                num_classes,
                self.NUM_CLASSES,
            )
        return names

    def splits(self) -> list[str]:
        return ["train", "val", "test", "id_test"]

    def records(self, split: str) -> list[SourceRecord]:
        self.check_split(split)
        rows = self._frame[self._frame["split"] == split]
        records = []
        for row in rows.itertuples(index=False):
            records.append(
                SourceRecord(
                    key=row.key,
                    label=int(row.sirna_id),
                    domain=str(row.experiment),
                    path=str(self.folder / row.path),
                )
            )
        self.log_counts(split, records)
        return records

    def fingerprint(self) -> str:
        entries = zip(self._frame["path"], self._sizes, strict=True)
        return digest_entries(self.name, self.options, entries, extra=self._metadata_bytes)


class Camelyon17(DatasetReader):
    """WILDS Camelyon17 v1.0: 96x96 lymph-node patches from five hospitals, tumor or not.

    The metadata's `center` column numbers the hospitals from 0 (the WILDS paper numbers them
    from 1 and calls the test hospital 5). Splits follow WILDS. Centers 0, 3 and 4 are divided
    by the `split` column into `train` (0) and `id_val` (1). Center 1 is `val` (OOD validation)
    and center 2 is `test`. The domain is `center_<n>` with the 0-based code.
    """

    name = "camelyon17"
    metric = "accuracy"
    FOLDER = "camelyon17_v1.0"
    COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "center", "split")
    VAL_CENTER = 1
    TEST_CENTER = 2
    FIX = (
        "download camelyon17_v1.0 from the WILDS release (see docs/datasets.md) and set "
        "dataset.root to that folder or to its parent"
    )

    def __init__(self, root: str, options=None):
        super().__init__(root, options)
        self.folder = find_data_folder(root, self.FOLDER, "metadata.csv", self.name)
        metadata = _check_wilds_layout(self, "patches")

        # Patient numbers are zero-padded in the CSV ("004"). They are read as text so that the
        # check below can name bad values as written, and paths use the integer value.
        frame = read_metadata_csv(
            metadata, self.COLUMNS, self.name, self.FIX, dtype={"patient": str}
        )
        self._check_values(frame)
        names = [
            f"patch_{self._slide_folder(int(p), n)}_x_{x}_y_{y}"
            for p, n, x, y in frame[["patient", "node", "x_coord", "y_coord"]].itertuples(
                index=False
            )
        ]
        paths = [
            f"patches/{self._slide_folder(int(p), n)}/{name}.png"
            for (p, n), name in zip(
                frame[["patient", "node"]].itertuples(index=False), names, strict=True
            )
        ]
        problems, self._sizes = check_listed_files(self.folder, paths, "metadata.csv")
        raise_layout_problems(self.name, self.folder, problems, self.FIX)
        self._frame = frame.assign(split=self._official_splits(frame), path=paths, key=names)
        self.classes = ["normal", "tumor"]
        self._metadata_bytes = metadata.read_bytes()

    def _check_values(self, frame: pd.DataFrame) -> None:
        problems = []
        if not frame["patient"].str.fullmatch(r"\d+").all():
            problems.append("metadata.csv: column 'patient' must hold patient numbers such as 004")
        for column, allowed in (("tumor", {0, 1}), ("split", {0, 1}), ("center", {0, 1, 2, 3, 4})):
            bad = sorted(set(frame[column].tolist()) - allowed)
            if bad:
                problems.append(
                    f"metadata.csv: column {column!r} has values {bad}; expected {sorted(allowed)}"
                )
        for column in ("node", "x_coord", "y_coord"):
            if not pd.api.types.is_integer_dtype(frame[column]):
                problems.append(f"metadata.csv: column {column!r} must hold integers")
        duplicated = frame.duplicated(["patient", "node", "x_coord", "y_coord"])
        if duplicated.any():
            problems.append(
                f"metadata.csv: rows {frame.index[duplicated].tolist()[:5]} repeat the "
                "patch (patient, node, x_coord, y_coord) of an earlier row"
            )
        raise_layout_problems(self.name, self.folder, problems, self.FIX)

    @staticmethod
    def _slide_folder(patient: int, node: int) -> str:
        return f"patient_{patient:03d}_node_{node}"

    def _official_splits(self, frame: pd.DataFrame) -> np.ndarray:
        """Apply the WILDS `official` split rule to every metadata row."""
        split = np.where(frame["split"] == 0, "train", "id_val").astype(object)
        split[(frame["center"] == self.VAL_CENTER).to_numpy()] = "val"
        split[(frame["center"] == self.TEST_CENTER).to_numpy()] = "test"
        return split

    def splits(self) -> list[str]:
        return ["train", "id_val", "val", "test"]

    def records(self, split: str) -> list[SourceRecord]:
        self.check_split(split)
        rows = self._frame[self._frame["split"] == split]
        records = []
        for row in rows.itertuples(index=False):
            records.append(
                SourceRecord(
                    key=row.key,
                    label=int(row.tumor),
                    domain=f"center_{row.center}",
                    path=str(self.folder / row.path),
                )
            )
        self.log_counts(split, records)
        return records

    def fingerprint(self) -> str:
        entries = zip(self._frame["path"], self._sizes, strict=True)
        return digest_entries(self.name, self.options, entries, extra=self._metadata_bytes)
