"""mkdocs hook: the settings tables of configuration.md, generated from ``ibf_core.settings.Settings``.

At build time the marker ``<!-- settings-table -->`` in configuration.md is replaced by one table per group of
settings (environment variable, type, default, description), built from the fields of ``Settings`` and their
``Field(description=...)``, so the page lists exactly what the code reads. Only ``ibf_core.settings`` is imported.
``settings_markdown()`` is what the page gets; ``env_name()`` is how a field's environment variable is derived.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import types
import typing
from pathlib import Path

MARKER = "<!-- settings-table -->"
PAGE = "configuration.md"
ROOT = Path(__file__).resolve().parents[2]

# Headings of the groups (a field's group is the first word of its name, when two or more fields share it).
# A prefix missing here is shown as it is; fields alone in their prefix go to "General".
GROUP_TITLES = {
    "csv": "CSV source",
    "bar": "Bar policy",
    "ib": "Interactive Brokers",
    "stream": "Live stream (`ibf stream`)",
    "news": "News",
    "alphavantage": "Alpha Vantage",
    "model": "Models",
    "mlflow": "MLflow",
    "drift": "Drift monitoring",
    "portfolio": "Portfolios",
    "api": "REST API (`ibf serve`)",
    "dagster": "Dagster",
    "k8s": "Kubernetes",
    "ducklake": "DuckLake",
    "aws": "S3 (for DuckLake)",
    "backup": "Backups",
}
SIMPLE_TYPES = {
    str: "text",
    int: "integer",
    float: "number",
    bool: "boolean (`true` / `false`)",
    Path: "path",
    dt.date: "date (YYYY-MM-DD)",
}


def _settings_module():
    if "ibf_core.settings" not in sys.modules and str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # mkdocs documents the checkout it builds, not another install of ibf
    import ibf_core.settings as settings

    return settings


def env_name(name: str, field, prefix: str) -> str:
    """The environment variable pydantic-settings reads for a field: its first validation alias, else prefix + name."""
    alias = field.validation_alias
    if alias is not None:
        choices = getattr(alias, "choices", [alias])
        first = choices[0]
        if isinstance(first, str):
            return first.upper()
    if field.alias:
        return field.alias.upper()
    return f"{prefix}{name}".upper()


def _is_secret(annotation, secret_cls) -> bool:
    return annotation is secret_cls or secret_cls in typing.get_args(annotation)


def _no_decode(field, no_decode_cls) -> bool:
    return any(isinstance(m, no_decode_cls) or m is no_decode_cls for m in field.metadata)


def _type_text(annotation, comma_list: bool, secret_cls) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0], comma_list, secret_cls)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a, comma_list, secret_cls) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        if comma_list:
            inner = SIMPLE_TYPES.get(args[0], "text") if args else "text"
            return "comma list" if inner == "text" else f"comma list of {inner}s"
        return "JSON list"
    if origin is dict:
        return "JSON object"
    if annotation is secret_cls:
        return "secret text"
    return SIMPLE_TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field) -> str:
    marks = []
    for meta in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                marks.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
    return ", ".join(marks)


def _default_text(field, comma_list: bool, secret: bool) -> str:
    value = field.get_default(call_default_factory=True)
    if secret:
        return "unset (secret)" if value is None else "(secret)"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        if comma_list:
            if not value:
                return "empty"
            text = ",".join(str(v) for v in value)
        else:
            text = json.dumps(list(value))
    elif isinstance(value, dict):
        text = json.dumps(value)
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, dt.date):
        text = value.isoformat()
    else:
        text = str(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def settings_rows() -> list[dict[str, str]]:
    """One row per ``Settings`` field, in declaration order."""
    module = _settings_module()
    from pydantic import SecretStr
    from pydantic_settings import NoDecode

    cls = module.Settings
    prefix = cls.model_config.get("env_prefix", "")
    rows = []
    for name, field in cls.model_fields.items():
        secret = _is_secret(field.annotation, SecretStr)
        comma_list = _no_decode(field, NoDecode)
        kind = _type_text(field.annotation, comma_list, SecretStr)
        bounds = _bounds(field)
        rows.append({
            "name": name,
            "env": env_name(name, field, prefix),
            "type": f"{kind}, {bounds}" if bounds else kind,
            "default": _default_text(field, comma_list, secret),
            "description": field.description or "",
        })
    return rows


def _group(name: str, counts: dict[str, int]) -> str:
    word = name.split("_")[0]
    return word if counts.get(word, 0) >= 2 else ""


def settings_markdown() -> str:
    """The markdown that replaces the marker: a table per group, then the renamed variables."""
    rows = settings_rows()
    counts: dict[str, int] = {}
    for row in rows:
        word = row["name"].split("_")[0]
        counts[word] = counts.get(word, 0) + 1
    groups: dict[str, list[dict[str, str]]] = {"": []}
    for row in rows:
        groups.setdefault(_group(row["name"], counts), []).append(row)
    parts = [f"{len(rows)} settings, each read from the environment variable in the first column.", ""]
    for key, members in groups.items():
        if not members:
            continue
        parts += [f"### {GROUP_TITLES.get(key, key) if key else 'General'}", ""]
        parts += ["| variable | type | default | description |", "|---|---|---|---|"]
        for row in members:
            parts.append(
                f"| `{row['env']}` | {_cell(row['type'])} | {_cell(row['default'])} | {_cell(row['description'])} |"
            )
        parts.append("")
    renamed = getattr(_settings_module(), "RENAMED_ENV", {})
    if renamed:
        parts += ["### Renamed variables", "", "Setting one of these stops `ibf` with an error naming the new name:", ""]
        parts += [f"- `{old}`: now `{new}`" for old, new in renamed.items()]
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{PAGE} lost its marker {MARKER}: the settings tables have nowhere to go")
    return markdown.replace(MARKER, settings_markdown())
