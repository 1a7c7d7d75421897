"""WSGI entry point for gunicorn: `gunicorn 'api.wsgi:app'`. Settings come from the environment."""

from __future__ import annotations

import os

from api.app import create_app

app = create_app(run_sweeper=os.environ.get("CANVAS_API_SWEEPER", "1") == "1")
