"""Registered versions read straight from the embedded SQLite registry equal what MLflow's client returns."""

from __future__ import annotations

import datetime as dt

from ibf_core.models import registry


def _registry(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    for name in ("ibf", "other"):
        client.create_registered_model(name)
    made = []
    for i, cutoff in enumerate(["2024-03-28", "2024-01-31", "2024-02-29", "2024-04-30"]):
        version = client.create_model_version("ibf", source=str(tmp_path / f"art{i}"), run_id=f"run{i}")
        made.append(version.version)
        if i != 3:  # the last one has no cut-off tag: not a usable version
            client.set_model_version_tag("ibf", version.version, "cutoff", cutoff)
            client.set_model_version_tag("ibf", version.version, "manifest_sha256", f"{i}" * 64)
        client.set_model_version_tag("ibf", version.version, "members", "gbdt")
    other = client.create_model_version("other", source=str(tmp_path / "x"), run_id="runx")
    client.set_model_version_tag("other", other.version, "cutoff", "2024-01-02")
    client.set_model_version_tag("other", other.version, "manifest_sha256", "f" * 64)
    client.delete_model_version("ibf", made[2])  # MLflow keeps the row, marked deleted
    return uri


def test_the_sqlite_registry_read_equals_mlflows_search(tmp_path):
    uri = _registry(tmp_path)
    path = tmp_path / "mlflow.db"
    for name in ("ibf", "other", "absent"):
        direct = sorted(registry._sqlite_versions(path, name))
        client = sorted(registry._client_versions(uri, name))
        assert direct == client
    versions = registry.list_versions(uri, "ibf")
    assert [(v.version, v.cutoff) for v in versions] == [("2", dt.date(2024, 1, 31)), ("1", dt.date(2024, 3, 28))]
    assert versions[0].run_id == "run1" and versions[0].manifest_sha256 == "1" * 64


def test_no_registry_yet_is_no_version(tmp_path):
    assert registry.list_versions(f"sqlite:///{tmp_path / 'absent.db'}", "ibf") == []
    assert not (tmp_path / "absent.db").exists()  # reading never creates the database
