"""Structural figures of the code base: longest functions, the import graph's layering rules, env readers.

Run ``python scripts/code_metrics.py`` to print them; ``tests/test_layering.py`` enforces the rules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ibf_core", "ibf_dagster", "ibf_serve")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def env_readers() -> list[str]:
    """Modules that touch ``os.environ`` / ``os.getenv``."""
    out = []
    for name, path in modules().items():
        text = path.read_text()
        if "os.environ" in text or "os.getenv" in text or "getenv(" in text:
            out.append(name)
    return out


def dagster_internal_importers() -> list[str]:
    return sorted(n for n, p in modules().items() if any(i.startswith("dagster._") for i in imports(p)))


def storage_user_imports() -> list[tuple[str, str]]:
    """(storage module, imported user module) pairs: storage must import none of its users."""
    users = ("ibf_core.monitoring.alerts", "ibf_core.news", "ibf_core.monitoring", "ibf_core.features")
    out = []
    for name, path in modules().items():
        if name.startswith("ibf_core.storage"):
            out += [(name, i) for i in sorted(imports(path)) if i.startswith(users)]
    return out


def asset_cross_imports() -> list[tuple[str, str]]:
    out = []
    for name, path in modules().items():
        if name.startswith("ibf_dagster.assets.") and not name.endswith("._shared"):
            out += [(name, i) for i in sorted(imports(path)) if i.startswith("ibf_dagster.assets.") and i != name]
    return out


def longest_functions(top: int = 10) -> list[tuple[int, str]]:
    sizes = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                sizes.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    return sorted(sizes, reverse=True)[:top]


def main() -> int:
    print("longest functions (lines):")
    for size, name in longest_functions():
        print(f"  {size:4d}  {name}")
    print("os.environ readers:", ", ".join(env_readers()) or "none")
    print("dagster._ importers:", ", ".join(dagster_internal_importers()) or "none")
    print("storage -> user imports:", ", ".join(f"{a} -> {b}" for a, b in storage_user_imports()) or "none")
    print("asset modules importing each other:", ", ".join(f"{a} -> {b}" for a, b in asset_cross_imports()) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
