"""Structural figures of the code base: longest functions, the import graph's layering rules, env readers.

Run ``python scripts/code_metrics.py`` to print them; ``tests/system/test_layering.py`` enforces the rules.
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


# Third-party libraries slow enough to import (>= ~50 ms here, or the ML stack) that a module may import them, or an
# ibf module that loads them, inside the function that needs them.
HEAVY = frozenset({
    "alibi_detect", "bokeh_sampledata", "dagster", "dagster_graphql", "dagster_k8s", "dagster_mlflow", "dagster_postgres",
    "dagster_webserver", "duckdb", "exchange_calendars", "fastapi", "httpx", "ib_async", "ib_insync", "lightgbm",
    "lightning", "lightning_utilities", "matplotlib", "mlflow", "neuralforecast", "numpy", "pandas", "prometheus_client", "psycopg2",
    "pyarrow", "pytorch_lightning", "safetensors", "scipy", "sklearn", "starlette", "statsmodels", "talib",
    "tenacity", "torch", "transformers", "uvicorn", "vaderSentiment",
})


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in known:
            return ".".join(parts[:k])
    return None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _import_nodes(path: Path, type_checking: bool = False) -> list[tuple[ast.stmt, bool]]:
    """(import statement, inside a function) for every import of a file; ``type_checking``: skip ``if TYPE_CHECKING``
    blocks (never run, so they load nothing)."""
    out: list[tuple[ast.stmt, bool]] = []

    def visit(node: ast.AST, inner: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, inner))
            if not (type_checking and _is_type_checking(child)):
                visit(child, inner or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return out


def import_targets(name: str, path: Path, node: ast.stmt, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(ibf modules, third-party top-level packages) one import statement of module ``name`` names."""
    ibf: set[str] = set()
    third: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            target = _resolve(alias.name, known)
            ibf |= {target} if target else set()
            third |= set() if target or alias.name.split(".")[0] in PACKAGES else {alias.name.split(".")[0]}
        return ibf, third
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = name.split(".")
        if path.name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if module.split(".")[0] not in PACKAGES:
        return ibf, {module.split(".")[0]}
    package = _resolve(module, known)  # ``from X import y`` runs X (a package's __init__) even when y is a submodule
    ibf |= {package} if package else set()
    for alias in node.names:
        full = f"{module}.{alias.name}"
        if full in known:
            ibf.add(full)
    return ibf, third


def import_graph(runtime: bool = False) -> dict[str, dict[str, set[str]]]:
    """module -> {"top": ibf modules imported at top level, "inner": inside functions, "top_third"/"inner_third": libraries};
    ``runtime``: only imports that run (``if TYPE_CHECKING`` blocks left out)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        entry = {"top": set(), "inner": set(), "top_third": set(), "inner_third": set()}
        for node, inner in _import_nodes(path, type_checking=runtime):
            ibf, third = import_targets(name, path, node, known)
            entry["inner" if inner else "top"] |= ibf - {name}
            entry["inner_third" if inner else "top_third"] |= third
        graph[name] = entry
    return graph


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of two or more modules, counting imports inside functions."""
    graph = import_graph()
    edges = {n: e["top"] | e["inner"] for n, e in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return sorted(cycles)


def heavy_closure() -> dict[str, set[str]]:
    """module -> the heavy libraries importing it loads (its top-level imports, followed through ibf modules)."""
    graph = import_graph(runtime=True)
    deps = {}
    for name in graph:
        # importing a.b.c runs the packages a and a.b first
        parents = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)} & graph.keys()
        deps[name] = graph[name]["top"] | parents
    closure = {name: graph[name]["top_third"] & HEAVY for name in graph}
    changed = True
    while changed:  # a fixed point: exact whatever the order, cycles included
        changed = False
        for name in graph:
            grown = closure[name].union(*(closure[d] for d in deps[name]))
            if grown != closure[name]:
                closure[name], changed = grown, True
    return closure


def needless_inner_imports() -> list[tuple[str, str]]:
    """(module, import) pairs inside functions that keep no heavy library off the module's import."""
    known = modules()
    heavy = heavy_closure()
    out = []
    for name, path in known.items():
        for node, inner in _import_nodes(path):
            if not inner:
                continue
            ibf, third = import_targets(name, path, node, known)
            brings = (third & HEAVY) | set().union(*(heavy[m] for m in ibf)) if ibf else third & HEAVY
            if not brings - heavy[name]:
                out.append((name, ast.unparse(node)))
    return sorted(out)


LAZY_IMPORT_COMMENT = "# Heavy imports"


def uncommented_lazy_importers() -> list[str]:
    """Modules that import inside functions without the one comment saying why (a line starting ``# Heavy imports``)."""
    out = []
    for name, path in modules().items():
        if any(inner for _, inner in _import_nodes(path)) and not any(
            line.lstrip().startswith(LAZY_IMPORT_COMMENT) for line in path.read_text().splitlines()
        ):
            out.append(name)
    return sorted(out)


def oversized_modules(limit: int = 600) -> list[tuple[str, int]]:
    return sorted((n, len(p.read_text().splitlines())) for n, p in modules().items() if len(p.read_text().splitlines()) > limit)


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
    print("import cycles:", "; ".join(" <-> ".join(c) for c in import_cycles()) or "none")
    print("needless imports inside functions:", len(needless_inner_imports()))
    print("modules over 600 lines:", ", ".join(f"{n} ({k})" for n, k in oversized_modules()) or "none")
    print("asset modules importing each other:", ", ".join(f"{a} -> {b}" for a, b in asset_cross_imports()) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
