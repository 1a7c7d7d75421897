"""WSGI entry point for gunicorn: `gunicorn 'api.wsgi:app'`. Settings come from the environment."""

from __future__ import annotations

from api.app import create_app
from shared.settings import Settings

settings = Settings.from_env()
app = create_app(settings, run_sweeper=settings.api_sweeper)
