"""Alembic is the only source of the schema: migrations match the models and run both ways."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from shared.migrate import downgrade, upgrade
from shared.models import Base


def test_migrations_match_the_models(base_settings) -> None:
    engine = create_engine(base_settings.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrations_run_down_and_up(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    downgrade(url)
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(url)
    assert {"jobs", "job_events", "outbox", "api_keys", "models"} <= set(inspect(engine).get_table_names())
    engine.dispose()
