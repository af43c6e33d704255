"""The layers stay layered: rules measured by scripts/code_metrics.py, enforced here."""

import importlib.util
import sys

from helpers.paths import ROOT

_spec = importlib.util.spec_from_file_location("code_metrics", ROOT / "scripts" / "code_metrics.py")
metrics = importlib.util.module_from_spec(_spec)
sys.modules["code_metrics"] = metrics
_spec.loader.exec_module(metrics)


def test_ibf_core_never_imports_dagster():
    offenders = [n for n, p in metrics.modules().items() if n.startswith("ibf_core") and any(i == "dagster" or i.startswith("dagster.") or i.startswith("dagster_") for i in metrics.imports(p))]
    assert offenders == []


def test_only_settings_and_the_instance_helper_read_the_environment():
    assert sorted(metrics.env_readers()) == ["ibf_core.settings", "ibf_dagster.instance"]


def test_dagster_internals_only_in_the_compat_module():
    assert metrics.dagster_internal_importers() == ["ibf_dagster.compat"]


def test_asset_modules_do_not_import_each_other():
    assert metrics.asset_cross_imports() == []


def test_storage_imports_none_of_its_users():
    assert metrics.storage_user_imports() == []


def test_the_service_sits_on_top():
    """ibf_core imports neither wiring nor the service; of ibf_dagster only the CLI calls the service."""
    mods = metrics.modules()
    assert "ibf_serve.app" in mods
    core = [n for n, p in mods.items() if n.startswith("ibf_core") and any(i.startswith(("ibf_serve", "ibf_dagster")) for i in metrics.imports(p))]
    assert core == []
    dagster_side = [n for n, p in mods.items() if n.startswith("ibf_dagster") and any(i.startswith("ibf_serve") for i in metrics.imports(p))]
    assert dagster_side == ["ibf_dagster.cli.services"]


def test_no_import_cycles_counting_imports_inside_functions():
    assert metrics.import_cycles() == []


def test_imports_inside_functions_only_keep_heavy_libraries_off_a_path():
    """An import inside a function must keep a heavy library (torch, lightgbm, pandas, dagster...) off the module's import."""
    assert metrics.needless_inner_imports() == []


def test_modules_that_import_inside_functions_say_why_once():
    assert metrics.uncommented_lazy_importers() == []


def test_no_module_over_600_lines():
    assert metrics.oversized_modules(600) == []


def test_ibf_core_top_level_holds_at_most_8_modules():
    top = sorted(p.name for p in (ROOT / "ibf_core").glob("*.py"))
    assert len(top) <= 8, top


def test_the_simulators_serve_only_the_cli_and_tests():
    users = sorted(
        n for n, p in metrics.modules().items()
        if not n.startswith("ibf_core.sim") and any(i.startswith("ibf_core.sim") for i in metrics.imports(p))
    )
    assert all(u == "ibf_dagster.cli" or u.startswith("ibf_dagster.cli.") for u in users), users


def test_the_cli_sits_on_top():
    """Nothing imports the command line but the command line (supervise's child names its entry point instead)."""
    mods = metrics.modules()
    assert "ibf_dagster.cli" in mods and "ibf_dagster.cli.data" in mods
    users = [n for n, p in mods.items() if not n.startswith("ibf_dagster.cli") and any(i == "ibf_dagster.cli" or i.startswith("ibf_dagster.cli.") for i in metrics.imports(p))]
    assert users == []
