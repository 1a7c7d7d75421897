"""Print the dependencies that pyproject.toml names, one per line, for `pip install -r`: the core (the API
image) and the extras named on the command line (`worker` for the worker image), plus what builds the
project (setuptools), so the images install their dependencies in a layer that only pyproject.toml
changes, before any code is copied. Standard library only: it runs before anything is installed.

    python deploy/requirements.py [EXTRA ...] > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    data = tomllib.loads(pyproject.read_text())
    project, optional = data["project"], data["project"].get("optional-dependencies", {})
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise SystemExit(f"no such extra in {pyproject}: {', '.join(unknown)} (known: {', '.join(optional)})")
    found = [*data["build-system"]["requires"], *project["dependencies"]]
    for name in extras:
        found += optional[name]
    return list(dict.fromkeys(found))


if __name__ == "__main__":
    print("\n".join(requirements(Path(__file__).resolve().parent.parent / "pyproject.toml", sys.argv[1:])))
