"""The layer rules of DESIGN.md section 2, checked by walking every import of every module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "api": {"torch", "transformers", "worker"},
    "shared": {"torch", "transformers", "api", "worker", "flask"},
    "worker/engine": {"celery", "flask", "sqlalchemy", "redis", "api", "shared"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    if package == "worker/engine" and not files:
        pytest.skip("worker/engine/ does not exist yet (the batched engine is issue 3)")
    assert files, f"{package} has no modules"
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package])
        for f in files
        if imported_roots(f) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_the_api_app_loads_without_torch() -> None:
    code = "import sys, api.app, api.wsgi; print(sorted(m for m in ('torch', 'transformers', 'worker') if m in sys.modules))"  # noqa: E501
    env_code = f"import os; os.environ['CANVAS_API_SWEEPER'] = '0'; {code}"
    out = subprocess.run([sys.executable, "-c", env_code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
