"""The layer rules of DESIGN.md section 2, checked by walking every import of every module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What only the worker image installs (the `worker` and `gpu` extras): the API image has none of it.
WORKER_ONLY = {"torch", "transformers", "peft", "safetensors", "bitsandbytes"}

# Every source directory and what it must not import; `tests/` and `bench/` may import anything.
FORBIDDEN = {
    "api": WORKER_ONLY | {"worker"},  # the API enqueues by task name; its image has no worker/
    "worker": {"api", "flask"},  # the worker starts the API as a process (`python -m api.serve`), never imports it
    "shared": WORKER_ONLY | {"api", "worker", "flask"},  # both images use it; plug-ins are found by entry point
    "migrations": WORKER_ONLY | {"api", "worker", "flask"},
    "deploy": WORKER_ONLY | {"api", "worker", "flask"},  # scripts of both images: health checks, gunicorn's settings
    "worker/engine": {"celery", "flask", "sqlalchemy", "redis", "api", "shared"},  # pure PyTorch
}
FREE = {"tests", "bench"}


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
    assert files, f"{package} has no modules"
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package])
        for f in files
        if imported_roots(f) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_every_source_directory_has_a_rule() -> None:
    tops = [d for d in ROOT.iterdir() if d.is_dir() and d.name[0] not in "._" and d.name not in {"var", "models"}]
    sources = {d.name for d in tops if next(d.rglob("*.py"), None)}
    assert sources - set(FORBIDDEN) - FREE == set(), "each source directory needs a layer rule"


def test_the_api_app_loads_without_torch() -> None:
    code = "import sys, api.app, api.wsgi; print(sorted(m for m in ('torch', 'transformers', 'worker') if m in sys.modules))"  # noqa: E501
    env_code = f"import os; os.environ['CANVAS_API_SWEEPER'] = '0'; {code}"
    out = subprocess.run([sys.executable, "-c", env_code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
