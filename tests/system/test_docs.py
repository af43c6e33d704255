"""The manual: `mkdocs build --strict` passes (broken links, anchors and pages left out of the nav fail it), the
README stays short, no line of the README or the docs is too long, and the configuration page lists every setting."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import AliasChoices

from helpers.paths import ROOT
from ibf_core.settings import Settings, load_settings

README_MAX_LINES = 250
MAX_LINE = 200


def setting_env_names() -> list[str]:
    """The environment variable of every ``Settings`` field, derived as pydantic-settings does: the first validation
    alias, else the env prefix + the field name (case-insensitive, shown upper-case)."""
    prefix = Settings.model_config["env_prefix"]
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            env = alias.choices[0]
        elif isinstance(alias, str):
            env = alias
        else:
            env = f"{prefix}{name}"
        names.append(env.upper())
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_the_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    assert (site / "configuration" / "index.html").is_file()


def test_the_configuration_page_lists_every_setting(site):
    page = (site / "configuration" / "index.html").read_text()
    assert "<!-- settings-table -->" not in page
    missing = [env for env in setting_env_names() if f"<code>{env}</code>" not in page]
    assert not missing, f"not on the configuration page: {missing}"


def test_the_derived_names_are_the_variables_settings_reads(monkeypatch):
    monkeypatch.setenv("IBF_IB_HOST", "10.1.2.3")  # env prefix + field name
    monkeypatch.setenv("AWS_REGION", "eu-north-1")  # a validation alias
    settings = load_settings()
    assert (settings.ib_host, settings.aws_region) == ("10.1.2.3", "eu-north-1")
    assert {"IBF_IB_HOST", "AWS_REGION", "ALPHAVANTAGE_API_KEY"} <= set(setting_env_names())


def test_the_readme_is_short_and_links_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README links to the manual"
    assert [link for link in links if not (ROOT / link).is_file()] == []


def test_no_line_is_too_long():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    long = [
        f"{path.relative_to(ROOT)}:{number} ({len(line)} characters)"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if len(line) > MAX_LINE
    ]
    assert not long, long
