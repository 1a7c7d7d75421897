"""`canvas api`: the API's commands, a plug-in of the `canvas` command (shared/cli.py)."""

from __future__ import annotations

import argparse

from shared.cli import Commands
from shared.settings import Settings


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.serve import main as serve_api

    serve_api(["--host", args.host, "--port", str(args.port)])
    return 0


def register(commands: Commands) -> None:
    api = commands.command("api", help="serve the API (production: gunicorn 'api.wsgi:app')", fn=cmd_api)
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
