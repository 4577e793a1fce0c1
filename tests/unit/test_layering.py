"""Dependencies point one way (SPEC section 1): ``pricing`` imports neither
``store`` nor ``proxy`` nor any driver, ``store`` never imports ``proxy``, and
``proxy/gateway`` never imports ``admin``, ``dashboard`` or ``cli``.

Read with ``ast`` from the source tree, so nothing is imported to check it and
an import inside a function or under ``TYPE_CHECKING`` counts as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DRIVERS = ("aiohttp", "asyncpg", "redis", "aiosqlite", "sqlite3")
FORBIDDEN = {
    "pricing": ("taximeter.store", "taximeter.proxy", *DRIVERS),
    "store": ("taximeter.proxy",),
    "proxy/gateway": ("taximeter.proxy.admin", "taximeter.proxy.dashboard", "taximeter.proxy.cli"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, by absolute name (relative imports resolved
    against the folder's ``taximeter.<folder>`` package)."""
    package = ["taximeter", *path.relative_to(ROOT).parent.parts]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_one_way(folder: str) -> None:
    modules = sorted((ROOT / folder).rglob("*.py"))
    assert modules, f"no modules found under {folder}/"
    broken = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules
        for name in sorted(imported_modules(path))
        if any(is_under(name, prefix) for prefix in FORBIDDEN[folder])
    ]
    assert broken == []


def test_the_check_sees_the_tree() -> None:
    pure = {path.name for path in (ROOT / "pricing").glob("*.py")}
    assert {"extract.py", "sse.py", "estimate.py", "budgets.py", "models.py", "catalog.py"} <= pure
    assert "taximeter.pricing.models" in imported_modules(ROOT / "store" / "base.py")
    assert "aiohttp" in imported_modules(ROOT / "proxy" / "app.py")
    gateway = {path.name for path in (ROOT / "proxy" / "gateway").rglob("*.py")}
    assert "proxying.py" in gateway
    assert "taximeter.proxy.gateway.auth" in imported_modules(ROOT / "proxy" / "gateway" / "proxying.py")
