"""The job kinds' registry and catalogs: every kind is complete on both sides, ids say their kind, and the
error codes clients read are the documented ones."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from api.job_kinds import PLANNERS
from api.schemas import JobCreate
from shared.job_errors import MEANINGS, JobErrorCode
from shared.job_kinds import GENERATION_KINDS, KINDS, JobKind, UnknownJobKind, kind_spec
from shared.jobs import new_job_id

ROOT = Path(__file__).resolve().parents[2]


def test_every_kind_has_a_spec_a_planner_or_its_own_route_and_an_executor() -> None:
    from worker.job_kinds import EXECUTORS, executor_for

    assert set(KINDS) == set(JobKind) == set(EXECUTORS)
    assert set(PLANNERS) == set(GENERATION_KINDS)  # fine-tunes are planned by POST /v1/fine_tunes
    assert set(typing.get_args(JobCreate.model_fields["kind"].annotation)) == {k.value for k in PLANNERS}
    for kind in JobKind:
        assert executor_for(kind.value) is executor_for(kind.value)  # built once, on first use


def test_an_unknown_kind_is_refused_by_every_table() -> None:
    from worker.job_kinds import executor_for

    for lookup in (kind_spec, executor_for):
        with pytest.raises(UnknownJobKind, match="unknown job kind 'translate'"):
            lookup("translate")


def test_ids_and_routes_follow_the_kind() -> None:
    assert new_job_id("generate").startswith("job_") and new_job_id("fine_tune").startswith("ft_")
    assert kind_spec("sudoku").queue("base") == "gen.base" and kind_spec("fine_tune").queue("base") == "train"


def test_the_documented_error_codes_are_the_catalog() -> None:
    page = (ROOT / "docs" / "errors.md").read_text()
    assert set(MEANINGS) == set(JobErrorCode)
    assert all(f"| `{code.value}` |" in page for code in JobErrorCode)
