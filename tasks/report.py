"""Per-run drift report: its reference, the reports store, and its ties to the candidate's run and version."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from tasks import registry, tracking
from tasks.config import PipelineSpec, as_path, expand
from tasks.snapshot import MANIFEST, is_local, read_manifest

if TYPE_CHECKING:  # tasks.drift imports Evidently: only the drift task needs it, not every importer
    from tasks.drift import Side

log = logging.getLogger(__name__)
MAX_TAG_COLUMNS = 5


def reports_store(spec: PipelineSpec) -> Path:
    """The reports store: a local folder, or object storage (s3://, gs://, memory://, ...) as a UPath."""
    return as_path(expand(spec.reports_root))


def report_id(dag_run_id: str) -> str:
    """A DAG run id as a folder name: only [A-Za-z0-9_.-], never starting with a dot ('..' is a valid run id)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run_id)
    return re.sub(r"^\.", "_", name) or "_"


def report_dir(spec: PipelineSpec, dag_run_id: str) -> Path:
    """A DAG run's folder in the reports store (drift report, contract result, gate verdict)."""
    return reports_store(spec) / report_id(dag_run_id)


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.glob("*"))
    except OSError:  # an object store may refuse to list a prefix that does not exist
        return []


def find_snapshot(spec: PipelineSpec, fingerprint: str, recorded: str | None) -> Path | None:
    """The snapshot whose manifest has `fingerprint`: the recorded location first, then the data store."""
    places: list[Path] = []
    if recorded:
        places += [as_path(recorded), *_children(as_path(recorded).parent)]
    places += _children(spec.data_root_path / spec.name)
    for place in places:
        try:
            if (place / MANIFEST).exists() and read_manifest(place)["fingerprint"] == fingerprint:
                return place
        except (OSError, ValueError, KeyError) as exc:  # a half-written or foreign folder: not ours
            log.debug("skipping %s: %s", place, exc)
    return None


def _window(manifest: dict[str, Any]) -> str:
    window = manifest.get("window") or {}
    return f"{str(window.get('start', '?'))[:10]} to {str(window.get('end', '?'))[:10]}"


def champion_data(spec: PipelineSpec, champion: str) -> tuple[Side | None, str]:
    """(the data `champion` was trained on, found by the fingerprint on its version, ""), or (None, why not)."""
    from tasks.dataset import load_frame
    from tasks.drift import Side

    tags = registry.version_tags(spec.registered_model, champion)
    fingerprint = tags.get("data.fingerprint", "")
    found = find_snapshot(spec, fingerprint, tags.get("data.snapshot")) if fingerprint else None
    if found is None:
        return None, (f"the data champion v{champion} was trained on (fingerprint {fingerprint[:12] or 'unrecorded'})"
                      " is no longer in the data store")
    description = f"the data champion v{champion} was trained on ({_window(read_manifest(found))})"
    return Side(load_frame(spec, found), description, str(found), fingerprint), ""


def compare_sides(spec: PipelineSpec, snapshot: Path, champion: str | None) -> tuple[Side, Side]:
    """(current, reference): this window against the data the champion was trained on.

    The champion's data is found by the fingerprint recorded on its version. With no champion yet,
    or when its data is gone from the store, the older half of this window is the reference and the
    newer half the current data; the reference's description says which and why.
    """
    from tasks.dataset import load_frame
    from tasks.drift import Side, split_window

    manifest = read_manifest(snapshot)
    frame = load_frame(spec, snapshot)
    current = Side(frame, f"this window ({_window(manifest)})", str(snapshot), manifest["fingerprint"])
    why = "there is no champion yet"
    if champion is not None:
        reference, why = champion_data(spec, champion)
        if reference is not None:
            return current, reference
        log.warning("drift reference: %s; comparing the halves of this window instead", why)
    older, newer = split_window(frame)
    return (Side(newer, f"the newer half of this window ({_window(manifest)})", str(snapshot),
                 manifest["fingerprint"]),
            Side(older, f"the older half of this window ({why})", str(snapshot), manifest["fingerprint"]))


def _put(source: Path, target: Path) -> None:
    put_bytes(source.read_bytes(), target)


def put_bytes(data: bytes, target: Path) -> None:
    """Write a file of the reports store whole: a reader (the UI page) never sees half of it."""
    if is_local(target):
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:  # ENOSPC and friends: say which file of the store could not be written
            raise OSError(exc.errno, f"{exc.strerror}: cannot write {target}") from exc
        finally:
            tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no temp file behind
    else:  # an object store writes an object whole
        target.write_bytes(data)


def put_json(doc: Any, out: Path, name: str) -> Path:
    """`doc` as `<out>/<name>` (indented JSON), written whole; the folder is created when missing."""
    out.mkdir(parents=True, exist_ok=True)
    put_bytes(json.dumps(doc, indent=2).encode(), out / name)
    return out / name


def publish(local: Path, out: Path) -> Path:
    """Copy the report into the store; the summary goes last, so a listed report is complete.

    Other files of the run's folder (contract result, gate verdict) are left alone.
    """
    from tasks.drift import REPORT_FILE, SUMMARY_FILE

    out.mkdir(parents=True, exist_ok=True)
    for name in (REPORT_FILE, SUMMARY_FILE):
        _put(local / name, out / name)
    return out


def version_tags(summary: dict[str, Any], location: str) -> dict[str, str]:
    """The summary as model version tags: the registry shows a version's drift without the report."""
    drifted = [c["column"] for c in summary["columns"] if c["drifted"]]
    listed = ", ".join(drifted[:MAX_TAG_COLUMNS]) + (", ..." if len(drifted) > MAX_TAG_COLUMNS else "")
    tags = {"drift.status": summary["status"], "drift.drifted_share": f"{summary['drifted_share']:.3f}",
            "drift.drifted_columns": listed or "none",
            "drift.reference": summary["reference"]["description"][:500], "drift.report": location,
            "drift.headline": summary["headline"][:1000]}
    for key in ("prediction", "target"):
        if summary.get(key):
            tags[f"drift.{key}"] = "drift" if summary[key]["drifted"] else "ok"
    return tags


def write_run_report(spec: PipelineSpec, snapshot: str, run_id: str, version: str, dag_run_id: str,
                     dag_id: str = "", run_date: str | None = None, tracking_uri: str | None = None) -> str:
    """Drift of this window against the champion's training data, with the candidate's scores on both.

    The HTML report and JSON summary go to the reports store (`<reports_root>/<dag run>/`), are logged
    under `drift/` on the candidate's MLflow run and summarised as `drift.*` tags on its version.

    Args:
        spec: the pipeline spec.
        snapshot: this run's snapshot.
        run_id: the candidate's MLflow run.
        version: the candidate's model version (its ONNX scores both sides: prediction drift).
        dag_run_id: names the report folder.
        dag_id: the DAG, for the run's link in the Airflow UI.
        run_date: when the run was asked for (ISO 8601), the date the report list shows.
        tracking_uri: MLflow tracking URI; default from the environment.

    Returns:
        The report folder in the store (report.html, summary.json).
    """
    from tasks.dataset import feature_columns
    from tasks.drift import build_drift_report
    from tasks.evaluate import download_model

    tracking.use_experiment(spec.name, tracking_uri)
    champion = registry.champion_version(spec.registered_model)
    current, reference = compare_sides(spec, as_path(snapshot), champion)
    context = {"dag_id": dag_id, "dag_run_id": dag_run_id, "run_date": run_date, "model_name": spec.registered_model,
               "model_version": version, "champion_version": champion}
    out = report_dir(spec, dag_run_id)
    with tempfile.TemporaryDirectory(prefix="drift-") as tmp:
        model = download_model(spec, version, Path(tmp) / "model")
        summary = build_drift_report(spec, current, reference, Path(tmp) / "report",
                                     score=lambda frame: model.predict_columns(feature_columns(spec, frame)),
                                     context=context)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifacts(str(Path(tmp) / "report"), "drift")
            mlflow.log_metric("drift_drifted_share", summary["drifted_share"])
        publish(Path(tmp) / "report", out)
    for key, value in version_tags(summary, str(out)).items():
        tracking.client().set_model_version_tag(spec.registered_model, version, key, value)
    log.info("drift report %s: %s", out, summary["headline"])
    return str(out)
