"""A trained model bundle (every member plus what feeds and calibrates them) and its checksummed folder.

On disk::

    bundle.json       config, cut-off, windows, scalers, ensemble weights, conformal quantiles, validation
    <member folder>/  each trained member's files, in the sub-folder its class declares (``Member.folder``):
      neural/<member>/  LSTM/TFT: NeuralForecast's safetensors + JSON (never pickle: loaded with allow_pickle=False)
                        and network.pt + network.json, the traced network that forecasts (``neural_script``)
      gbdt/h<h>.txt     GBDT: LightGBM text models
    manifest.json     SHA-256 of every file above

Baselines save nothing; ``load_bundle`` rebuilds every member of ``bundle_members(config)`` through the
member registry, so a folder written before the member protocol loads unchanged (format 1).

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

from ibf_core.models import ModelLoadError
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import RobustScaler
from ibf_core.models.members import Inputs, Member, bundle_members, member_class

FORMAT_VERSION = 1
# Sessions loaded before an origin beyond the longest member look-back: the first loaded row has no 1-day
# return and the trailing volatility that scales the intervals reads VOL_WINDOW returns; 40 leaves room.
LOOKBACK_MARGIN = 40


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
    members: dict[str, Member] = field(default_factory=dict)  # name -> fitted member, baselines first
    ensemble: dict[str, dict[str, Any]] = field(default_factory=dict)  # str(h) -> choice
    conformal: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # member -> str(h) -> q
    up_rate: dict[str, float] = field(default_factory=dict)  # str(h) -> training share of positive targets
    validation: list[dict[str, Any]] = field(default_factory=list)  # one row per (horizon, member)
    facts: dict[str, Any] = field(default_factory=dict)  # device, timings, symbols, fingerprint, dropped features

    def inputs(self) -> Inputs:
        """What every member of this bundle was built from."""
        return Inputs(self.config, self.scaler, self.y_sigma, self.gbdt_features)

    def lookback_sessions(self) -> int:
        """Sessions of panel history to load before an origin so that every member reads all it reads."""
        return max((m.lookback_sessions(self.config) for m in self.members.values()), default=0) + LOOKBACK_MARGIN

    def min_usable_sessions(self) -> int:
        """Usable sessions past the feature warm-up, ending at the origin, a symbol needs for a forecast."""
        return max((m.history_sessions(self.config) for m in self.members.values()), default=1)

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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    (folder / "bundle.json").write_text(json.dumps(bundle.describe(), indent=1, default=_json_default))
    for member in bundle.members.values():
        if member.folder is not None:
            member.save(folder / member.folder)
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
    """The bundle saved in ``folder`` after ``verify_bundle``; every member is loaded through the registry."""
    folder = Path(folder)
    verify_bundle(folder, expected_digest)
    data = json.loads((folder / "bundle.json").read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{folder}: bundle format {data.get('format_version')} is not {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(data["config"])
    except ValueError as exc:  # e.g. a member this process has not registered
        raise ModelLoadError(f"{folder}: {exc}") from exc
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
    inputs = bundle.inputs()
    try:
        for name in bundle_members(config):
            cls = member_class(name)
            bundle.members[name] = cls.load(folder / cls.folder if cls.folder else folder, inputs)
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
