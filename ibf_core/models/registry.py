"""MLflow tracking and Model Registry for model bundles: log a training run, register it, find and load versions.

A version carries tags ``cutoff`` (ISO date), ``manifest_sha256`` (digest of the bundle's checksum manifest),
``data_fingerprint``, ``members`` and ``device``. Prediction picks the newest version whose cut-off is
strictly before the origin date and loads it only after every file matches the recorded checksums.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ibf_core.models import ModelLoadError
from ibf_core.models.bundle import ModelBundle, load_bundle, save_bundle
from ibf_core.models.importance_report import mlflow_metrics as importance_metrics
from ibf_core.settings import library_default
from ibf_core.storage import atomic

# Heavy imports (mlflow) stay inside the functions that need them: importing this module loads none of them.

ARTIFACT_PATH = "model"


class HasCutoff(Protocol):
    cutoff: dt.date


V = TypeVar("V", bound=HasCutoff)


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    cutoff: dt.date
    run_id: str
    source: str
    manifest_sha256: str


def quiet_mlflow():
    """``mlflow``, quiet unless the user asked otherwise: no per-download progress bars
    (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``; loading a bundle printed a "Downloading artifacts" bar per call, 21 in
    a `make demo`) and warnings only from its loggers (``MLFLOW_LOGGING_LEVEL``, read when mlflow is first
    imported: "Creating initial MLflow database tables..."). Call it before anything imports mlflow."""
    library_default("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    library_default("MLFLOW_LOGGING_LEVEL", "WARNING")
    import mlflow  # ~2.4 s of imports: only on the paths that talk to the registry

    return mlflow


def ensure_experiment(tracking_uri: str, experiment: str, artifact_root: Path | str | None) -> str:
    """Create the experiment with its artifacts under ``artifact_root`` (a folder, not MLflow's cwd-relative
    default; or a URI such as ``s3://bucket/prefix``; None: the tracking server's own artifact store)."""
    mlflow = quiet_mlflow()

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    if artifact_root is None:
        return client.create_experiment(experiment)
    if isinstance(artifact_root, str) and "://" in artifact_root:
        return client.create_experiment(experiment, artifact_location=artifact_root)
    artifact_root = Path(artifact_root)
    artifact_root.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(experiment, artifact_location=artifact_root.resolve().as_uri())


def _flat_params(bundle: ModelBundle) -> dict[str, Any]:
    params = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in bundle.config.to_dict().items()}
    params.update(
        cutoff=bundle.cutoff.isoformat(),
        train_end=bundle.train_end.isoformat(),
        validation_start=bundle.validation_start.isoformat(),
        validation_end=bundle.validation_end.isoformat(),
        device=bundle.facts.get("device"),
        symbols=",".join(bundle.facts.get("symbols", [])),
        gbdt_feature_count=len(bundle.gbdt_features),
    )
    return {k: str(v)[:500] for k, v in params.items()}


def _metrics(bundle: ModelBundle) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for row in bundle.validation:
        for key in ("mae", "rel_mae_vs_naive", "da", "rank_ic_mean", "coverage_80", "coverage_95", "dm_pvalue"):
            value = row.get(key)
            if value is not None:
                metrics[f"val_h{row['horizon']}_{row['member']}_{key}"] = float(value)
    for member, facts in bundle.facts.get("members", {}).items():
        metrics[f"train_seconds_{member}"] = float(facts["seconds"])
    metrics.update(importance_metrics(bundle.facts.get("importance")))
    for phase, record in bundle.facts.get("resources", {}).get("phases", {}).items():
        key = "".join(c if c.isalnum() else "_" for c in phase)
        for field in ("seconds", "peak_rss_mib"):
            if record.get(field) is not None:
                metrics[f"phase_{key}_{field}"] = float(record[field])
    return metrics


def log_and_register(bundle: ModelBundle, name: str, work_dir: Path) -> RegisteredModel:
    """Log params, validation metrics, feature importance (``importance/<member>/h<h>/<group>`` metrics and
    ``importance.json``) and the bundle to the *active* MLflow run, then register a version.

    The bundle is saved into ``work_dir`` first (checksummed), uploaded as the run's ``model`` artifact, and
    the registry version points at that artifact.
    """
    mlflow = quiet_mlflow()

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run (start one, or use the dagster-mlflow resource)")
    folder = Path(work_dir) / "bundle"
    digest = save_bundle(bundle, folder)
    for chunk in _chunks(_flat_params(bundle), 100):
        mlflow.log_params(chunk)
    metrics = _metrics(bundle)
    for chunk in _chunks(metrics, 500):
        mlflow.log_metrics(chunk)
    mlflow.set_tags({"cutoff": bundle.cutoff.isoformat(), "manifest_sha256": digest, "data_fingerprint": bundle.facts["fingerprint"]})
    mlflow.log_artifacts(str(folder), ARTIFACT_PATH)
    mlflow.log_text(json.dumps(bundle.validation, indent=1, default=str), "validation.json")
    if bundle.facts.get("importance"):
        mlflow.log_text(json.dumps(bundle.facts["importance"], indent=1, default=str), "importance.json")
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises RESOURCE_DOES_NOT_EXIST as a generic MlflowException
        client.create_registered_model(name, description="ibf global multi-horizon return forecaster (ensemble bundle)")
    source = f"{run.info.artifact_uri}/{ARTIFACT_PATH}"
    tags = {
        "cutoff": bundle.cutoff.isoformat(),
        "manifest_sha256": digest,
        "data_fingerprint": bundle.facts["fingerprint"],
        "members": ",".join(bundle.config.members),
        "device": str(bundle.facts.get("device")),
    }
    version = client.create_model_version(name, source=source, run_id=run.info.run_id, tags=tags)
    return RegisteredModel(name, str(version.version), bundle.cutoff, run.info.run_id, source, digest)


def _chunks(items: dict[str, Any], size: int):
    keys = list(items)
    for i in range(0, len(keys), size):
        yield {k: items[k] for k in keys[i : i + size]}


def list_versions(tracking_uri: str, name: str) -> list[RegisteredModel]:
    """Every registered version with a cut-off tag, oldest cut-off first.

    On the embedded SQLite registry the two registry tables are read directly (~10 ms): MLflow's client builds
    its SQLAlchemy store first, ~1.5-2 s of imports and mapper set-up that every predictions and drift run paid.
    """
    if tracking_uri.startswith("sqlite:///"):
        found = _sqlite_versions(Path(tracking_uri[len("sqlite:///"):]), name)
    else:
        found = _client_versions(tracking_uri, name)
    out = []
    for version, run_id, source, tags in found:
        if "cutoff" not in tags or "manifest_sha256" not in tags:
            continue
        out.append(RegisteredModel(name, str(version), dt.date.fromisoformat(tags["cutoff"]), run_id, source, tags["manifest_sha256"]))
    return sorted(out, key=lambda m: (m.cutoff, int(m.version)))


Found = list[tuple[str, str, str, dict[str, str]]]  # (version, run id, source, tags) per registered version


def _client_versions(tracking_uri: str, name: str) -> Found:
    mlflow = quiet_mlflow()

    client = mlflow.MlflowClient(tracking_uri)
    try:
        found = client.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - no registry yet
        return []
    return [(str(v.version), v.run_id, v.source, dict(v.tags or {})) for v in found]


# MLflow marks a deleted version with this stage and keeps its row; its own search leaves such rows out.
_DELETED_STAGE = "Deleted_Internal"


def _sqlite_versions(path: Path, name: str) -> Found:
    """``_client_versions`` read from the registry tables of MLflow's SQLite store (``tests/core/models/test_registry_versions.py`` checks
    both agree); no database or no registry table yet is no version, any other error is raised."""
    if not path.is_file():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"model_versions", "model_version_tags"} <= tables:
            return []
        workspace = "AND workspace = 'default'" if "workspace" in {r[1] for r in con.execute("PRAGMA table_info(model_versions)")} else ""
        rows = con.execute(
            f"SELECT version, run_id, source FROM model_versions WHERE name = ? AND current_stage != ? {workspace}",
            (name, _DELETED_STAGE),
        ).fetchall()
        tags: dict[int, dict[str, str]] = {}
        for version, key, value in con.execute(f"SELECT version, key, value FROM model_version_tags WHERE name = ? {workspace}", (name,)):
            tags.setdefault(int(version), {})[key] = value
    finally:
        con.close()
    return [(str(version), run_id, source, tags.get(int(version), {})) for version, run_id, source in rows]


def newest_before(versions: Sequence[V], origin: dt.date) -> V | None:
    """The newest of ``versions`` (sorted by cut-off) whose cut-off is strictly before ``origin``, or None.

    Strictly before: no model may have been trained on the origin's own data. Predictions, drift scoring and
    the policy backtest all choose their model with this rule.
    """
    eligible = [v for v in versions if v.cutoff < origin]
    return eligible[-1] if eligible else None


def version_for(tracking_uri: str, name: str, origin: dt.date, versions: Sequence[RegisteredModel] | None = None) -> RegisteredModel:
    """The registered version an origin must use (``newest_before``); an error naming the origin when none exists."""
    chosen = newest_before(list_versions(tracking_uri, name) if versions is None else versions, origin)
    if chosen is None:
        raise ModelLoadError(
            f"no registered version of {name!r} has a cut-off before {origin}: materialize trained_models "
            "for an earlier cut-off first (ibf train --cutoff DATE)"
        )
    return chosen


def load_registered(tracking_uri: str, model: RegisteredModel, cache_dir: Path) -> ModelBundle:
    """Download (once) and load a version after verifying its files against the registered manifest digest.

    A version already in the cache is verified and loaded without importing MLflow (2.5-3.4 s of every daily
    ``predictions`` run)."""
    target = Path(cache_dir) / model.name / model.version
    if not target.is_dir():
        mlflow = quiet_mlflow()

        def download(staging: Path) -> Path:
            try:
                mlflow.set_tracking_uri(tracking_uri)
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=model.source, dst_path=str(staging)))
            except Exception as exc:  # noqa: BLE001 - any download failure is reported with the version
                raise ModelLoadError(f"{model.name} v{model.version}: cannot download {model.source} ({exc})") from exc

        atomic.publish_folder(target, download)  # False: another process cached it first, equally good
    try:
        return load_bundle(target, model.manifest_sha256)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{model.name} v{model.version}: {exc}") from exc
