"""The values settings are made of: symbols, secret-bearing URLs, comma lists and the flat TOML source."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,15}$")
DEFAULT_UNIVERSE = ("AAPL", "GOOG", "IBM", "MSFT")
# Environment variables that name a secret by convention (their values are redacted everywhere).
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
# Variables whose names said "days" for session counts; setting an old name is an error naming the new one.
RENAMED_ENV = {
    "IBF_MODEL_VALIDATION_DAYS": "IBF_MODEL_VALIDATION_SESSIONS",
    "IBF_DRIFT_WINDOW": "IBF_DRIFT_PERFORMANCE_SESSIONS",
    "IBF_RETRAIN_COOLDOWN_DAYS": "IBF_RETRAIN_COOLDOWN_SESSIONS",
}


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the environment variable."""


def normalize_symbol(raw: str) -> str:
    """Upper-case a ticker and reject characters that cannot be a symbol or a Dagster partition key."""
    symbol = raw.strip().upper()
    if not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"invalid symbol {raw!r}: use letters, digits, '.' or '-' (max 16 characters)")
    return symbol


def url_secrets(url: str) -> list[str]:
    """A URL and the parts of it that may carry a token (path + query, password)."""
    url = url.strip()
    if not url:
        return []
    out = [url]
    try:
        parts = urlsplit(url)
    except ValueError:
        return out
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    if tail.strip("/"):
        out.append(tail)
    if parts.password:
        out.append(parts.password)
    return out


def password_of(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(",")) if part]
    return value


class TomlFlatSource(PydanticBaseSettingsSource):
    """Reads ``config/settings.toml``; a table ``[ib] host = ...`` maps to the field ``ib_host``."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the ABC, unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = tomllib.loads(self.path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{self.path}: not valid TOML ({exc})") from exc
        flat: dict[str, Any] = {}
        known = set(self.settings_cls.model_fields)
        for key, value in data.items():
            if isinstance(value, dict) and key not in known:  # a table, unless it is a setting's own value
                for sub, sub_value in value.items():
                    flat[f"{key}_{sub}"] = sub_value
            else:
                flat[key] = value
        unknown = sorted(set(flat) - known)
        if unknown:
            raise SettingsError(f"{self.path}: unknown setting(s) {', '.join(unknown)}")
        return flat
