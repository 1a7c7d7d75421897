"""WSGI entry point for gunicorn: `gunicorn 'api.wsgi:app'`. Settings come from the environment; the app's
lines are logged in CANVAS_LOG_FORMAT (gunicorn's own, through `shared.logs.gunicorn_logconfig`)."""

from __future__ import annotations

from api.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings

settings = Settings.from_env()
configure_logging(settings.log_level, settings.log_format)  # gunicorn sets up only its own loggers
app = create_app(settings, run_sweeper=settings.api_sweeper, recover_batches=True)
