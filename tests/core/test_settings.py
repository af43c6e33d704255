import datetime as dt

import pytest

from ibf_core.settings import SettingsError, load_settings


def test_defaults_keep_state_under_home(ibf_home):
    s = load_settings()
    assert s.source == "sample"
    assert s.ib_ports == [7497, 7496, 4002, 4001]
    assert s.universe == ["AAPL", "GOOG", "IBM", "MSFT"]
    assert s.warehouse_path == ibf_home.resolve() / "warehouse.duckdb"
    assert s.dagster_home.parent == ibf_home.resolve()
    assert s.mlflow_uri.startswith("sqlite:///") and str(ibf_home.resolve()) in s.mlflow_uri


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("IBF_UNIVERSE", "msft, aapl,MSFT")
    monkeypatch.setenv("IBF_IB_PORTS", "4002,4001")
    monkeypatch.setenv("IBF_HISTORY_START", "2010-01-04")
    monkeypatch.setenv("IBF_IB_CLIENT_ID", "7")
    s = load_settings()
    assert s.universe == ["MSFT", "AAPL"]
    assert s.ib_ports == [4002, 4001]
    assert s.history_start == dt.date(2010, 1, 4)
    assert s.ib_client_id == 7


@pytest.mark.parametrize(
    "name,value",
    [
        ("IBF_SOURCE", "bloomberg"),
        ("IBF_IB_PORTS", "4002,abc"),
        ("IBF_IB_PORTS", "70000"),
        ("IBF_UNIVERSE", "AAPL,BAD|SYM"),
        ("IBF_HISTORY_START", "yesterday"),
        ("IBF_IB_CLIENT_ID", "-1"),
        ("IBF_DATE_PARTITIONS", "hour"),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_csv_source_needs_a_path(monkeypatch):
    monkeypatch.setenv("IBF_SOURCE", "csv")
    with pytest.raises(SettingsError, match="IBF_CSV_PATH"):
        load_settings()


def test_toml_file_with_sections(tmp_path, monkeypatch):
    config = tmp_path / "settings.toml"
    config.write_text('universe = ["IBM"]\n[ib]\nhost = "10.0.0.5"\nports = [4001]\nclient_id = 3\n')
    monkeypatch.setenv("IBF_CONFIG", str(config))
    s = load_settings()
    assert (s.universe, s.ib_host, s.ib_ports, s.ib_client_id) == (["IBM"], "10.0.0.5", [4001], 3)
    monkeypatch.setenv("IBF_IB_HOST", "127.0.0.2")  # the environment wins over the file
    assert load_settings().ib_host == "127.0.0.2"


def test_toml_unknown_key_is_an_error(tmp_path, monkeypatch):
    config = tmp_path / "settings.toml"
    config.write_text("[ib]\nhots = 'x'\n")
    monkeypatch.setenv("IBF_CONFIG", str(config))
    with pytest.raises(SettingsError, match="ib_hots"):
        load_settings()


def test_example_config_is_valid_and_the_manual_documents_every_setting(monkeypatch):
    import importlib.util

    from helpers.paths import ROOT as root
    from ibf_core.settings import Settings

    monkeypatch.setenv("IBF_CONFIG", str(root / "config" / "settings.example.toml"))
    assert load_settings().universe == ["AAPL", "GOOG", "IBM", "MSFT"]
    # docs/configuration.md's settings tables, as the mkdocs hook renders them (tests/system/test_docs.py builds the site)
    spec = importlib.util.spec_from_file_location("settings_page", root / "docs" / "hooks" / "settings_page.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.settings_markdown()
    for name, field in Settings.model_fields.items():
        env = field.validation_alias.choices[0] if field.validation_alias else f"IBF_{name.upper()}"
        assert f"`{env}`" in page, name
        assert field.description, f"{name} has no description for the manual"


def test_renamed_variable_is_an_error_naming_the_new_one(monkeypatch):
    monkeypatch.setenv("IBF_RETRAIN_COOLDOWN_DAYS", "5")
    with pytest.raises(SettingsError, match="IBF_RETRAIN_COOLDOWN_DAYS.*IBF_RETRAIN_COOLDOWN_SESSIONS"):
        load_settings()


def test_secrets_are_secret_fields_and_listed_for_redaction(monkeypatch):
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "av-secret-123")
    monkeypatch.setenv("IBF_ALERT_WEBHOOK", "https://hooks.example/T000/B111/XYZ")
    settings = load_settings()
    assert "av-secret-123" not in repr(settings) and "XYZ" not in repr(settings)
    secrets = settings.secret_values()
    assert "av-secret-123" in secrets and "/T000/B111/XYZ" in secrets
