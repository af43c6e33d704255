"""A trained model bundle (every member plus what feeds and calibrates them) and its checksummed folder.

On disk::

    bundle.json       config, cut-off, windows, scalers, ensemble weights, conformal quantiles, validation
    neural/<member>/  NeuralForecast's safetensors + JSON format (never pickle: loaded with allow_pickle=False)
    gbdt/h<h>.txt     LightGBM text models
    manifest.json     SHA-256 of every file above

``load_bundle`` refuses a folder whose files do not match the manifest, or whose manifest does not match
the digest the registry recorded at training time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibf_core.models import NEURAL_MEMBERS, ModelLoadError
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import RobustScaler

FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    """Everything needed to forecast from origins after ``cutoff``."""

    config: ModelConfig
    cutoff: dt.date
    train_end: dt.date
    validation_start: dt.date
    validation_end: dt.date
    scaler: RobustScaler | None
    y_sigma: float
    vol_fallback: float
    gbdt_features: list[str]
    neural: dict[str, Any] = field(default_factory=dict)
    gbdt: dict[int, Any] = field(default_factory=dict)
    ensemble: dict[str, dict[str, Any]] = field(default_factory=dict)  # str(h) -> choice
    conformal: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # member -> str(h) -> q
    up_rate: dict[str, float] = field(default_factory=dict)  # str(h) -> training share of positive targets
    validation: list[dict[str, Any]] = field(default_factory=list)  # one row per (horizon, member)
    facts: dict[str, Any] = field(default_factory=dict)  # device, timings, symbols, fingerprint, dropped features

    def lookback_sessions(self) -> int:
        """Sessions of panel history to load before an origin (neural inputs, the drift baseline, slack)."""
        return self.config.input_size + self.config.drift_baseline_sessions + 40

    def min_usable_sessions(self) -> int:
        """Usable sessions past the warm-up a symbol needs on an origin to be forecast."""
        return self.config.input_size if set(self.config.members) & set(NEURAL_MEMBERS) else 1

    def describe(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "cutoff": self.cutoff.isoformat(),
            "train_end": self.train_end.isoformat(),
            "validation_start": self.validation_start.isoformat(),
            "validation_end": self.validation_end.isoformat(),
            "scaler": self.scaler.to_dict() if self.scaler else None,
            "y_sigma": self.y_sigma,
            "vol_fallback": self.vol_fallback,
            "gbdt_features": self.gbdt_features,
            "ensemble": self.ensemble,
            "conformal": self.conformal,
            "up_rate": self.up_rate,
            "validation": self.validation,
            "facts": self.facts,
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def save_bundle(bundle: ModelBundle, folder: Path) -> str:
    """Write the bundle into an empty or new ``folder``; returns the manifest digest to record in the registry."""
    from ibf_core.models import gbdt, neural

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    (folder / "bundle.json").write_text(json.dumps(bundle.describe(), indent=1, default=_json_default))
    for member, nf in bundle.neural.items():
        neural.save(nf, folder / "neural" / member)
    if bundle.gbdt:
        gbdt.save(bundle.gbdt, folder / "gbdt")
    manifest = {
        str(path.relative_to(folder)): _sha256(path) for path in sorted(folder.rglob("*")) if path.is_file()
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest_digest(manifest)


def verify_bundle(folder: Path, expected_digest: str | None = None) -> dict[str, str]:
    """Check every file against ``manifest.json`` (and the manifest against ``expected_digest``)."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(f"{folder}: no manifest.json, not a model bundle")
    manifest = json.loads(manifest_path.read_text())
    if expected_digest is not None and manifest_digest(manifest) != expected_digest:
        raise ModelLoadError(f"{folder}: manifest digest differs from the one recorded at training time")
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    if present != set(manifest):
        extra, missing = sorted(present - set(manifest)), sorted(set(manifest) - present)
        raise ModelLoadError(f"{folder}: files differ from the manifest (unexpected {extra}, missing {missing})")
    for name, digest in manifest.items():
        path = folder / name
        if path.is_symlink() or not path.resolve().is_relative_to(folder.resolve()):
            raise ModelLoadError(f"{folder}: {name} points outside the bundle")
        if _sha256(path) != digest:
            raise ModelLoadError(f"{folder}: checksum mismatch for {name} (file changed after training)")
    return manifest


def load_bundle(folder: Path, expected_digest: str | None = None) -> ModelBundle:
    from ibf_core.models import gbdt, neural

    folder = Path(folder)
    verify_bundle(folder, expected_digest)
    data = json.loads((folder / "bundle.json").read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{folder}: bundle format {data.get('format_version')} is not {FORMAT_VERSION}")
    config = ModelConfig.from_dict(data["config"])
    bundle = ModelBundle(
        config=config,
        cutoff=dt.date.fromisoformat(data["cutoff"]),
        train_end=dt.date.fromisoformat(data["train_end"]),
        validation_start=dt.date.fromisoformat(data["validation_start"]),
        validation_end=dt.date.fromisoformat(data["validation_end"]),
        scaler=RobustScaler.from_dict(data["scaler"]) if data["scaler"] else None,
        y_sigma=float(data["y_sigma"]),
        vol_fallback=float(data["vol_fallback"]),
        gbdt_features=list(data["gbdt_features"]),
        ensemble=data["ensemble"],
        conformal=data["conformal"],
        up_rate=data["up_rate"],
        validation=data["validation"],
        facts=data["facts"],
    )
    try:
        for member in config.members:
            if member in NEURAL_MEMBERS:
                bundle.neural[member] = neural.load(folder / "neural" / member)
        if "gbdt" in config.members:
            bundle.gbdt = gbdt.load(folder / "gbdt", config.horizons)
    except ModelLoadError:
        raise
    except Exception as exc:  # a library's own load error, reported with the bundle it came from
        raise ModelLoadError(f"{folder}: cannot load model files ({type(exc).__name__}: {exc})") from exc
    return bundle


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")
