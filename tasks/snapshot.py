"""Immutable, fingerprinted Parquet snapshots: a folder of part files plus `manifest.json`."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Window:
    """A half-open training window [start, end) in the source data's (naive, local) time."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ValueError(f"window start {self.start} is not before its end {self.end}")

    @property
    def slug(self) -> str:
        return f"{self.start:%Y%m%dT%H%M}_{self.end:%Y%m%dT%H%M}"


def snapshot_dir(data_root: Path, pipeline: str, window: Window) -> Path:
    """The deterministic home of a (pipeline, window) snapshot: reruns land in the same place."""
    return data_root / pipeline / window.slug


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SnapshotWriter:
    """Writes batches into a hidden temp folder, then publishes it under its final name.

    The fingerprint hashes every row in order (pandas row hashes) plus the schema, so it does
    not depend on how rows were cut into batches or files.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self.files: list[dict[str, Any]] = []
        self.schema: pa.Schema | None = None
        self._rows_hash = hashlib.sha256()
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        if self.schema is None:
            self.schema = table.schema
        name = f"part-{len(self.files):05d}.parquet"
        pq.write_table(table, self.tmp / name)
        self._rows_hash.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        self.rows += len(frame)
        self.files.append({"path": name, "rows": len(frame), "sha256": _sha256(self.tmp / name)})

    def publish(self, details: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest and make the snapshot visible; an identical one is kept as it is."""
        schema = self.schema or pa.schema([])
        fields = [{"name": f.name, "type": str(f.type)} for f in schema]
        digest = hashlib.sha256(json.dumps(fields).encode())
        digest.update(self._rows_hash.digest())
        manifest = {
            **details,
            "rows": self.rows,
            "schema": fields,
            "files": self.files,
            "fingerprint": digest.hexdigest(),
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        existing = read_manifest(self.target) if (self.target / MANIFEST).exists() else None
        if existing and existing["fingerprint"] == manifest["fingerprint"]:
            self.discard()
            return existing
        if self.target.exists():
            # Move the old one aside first: the target name never shows a half-written folder.
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            self.target.rename(old)
            self.tmp.rename(self.target)
            shutil.rmtree(old)
        else:
            self.tmp.rename(self.target)
        return manifest

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_manifest(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    return manifest


def read_snapshot(path: Path, columns: Iterable[str] | None = None) -> pa.Table:
    """All rows of a snapshot, in order, as one Arrow table."""
    manifest = read_manifest(path)
    cols = list(columns) if columns is not None else None
    tables = [pq.read_table(path / f["path"], columns=cols) for f in manifest["files"]]
    if not tables:
        return pa.table({c: pa.array([], pa.null()) for c in (cols or [])})
    return pa.concat_tables(tables)
