"""The test reference's own cut (tests/reference_generation.py), which the engine tests rely on."""

from __future__ import annotations

import pytest

from tests.reference_generation import cut_output


@pytest.mark.parametrize(
    ("tokens", "limit", "expected"),
    [
        ([5, 6, 1, 7], 10, ([5, 6], "eos")),
        ([5, 6, 7, 8], 3, ([5, 6, 7], "length")),
        ([5, 6, 7, 1], 3, ([5, 6, 7], "length")),
        ([1, 5], 3, ([], "eos")),
    ],
)
def test_output_is_cut_at_eos_and_at_max_new_tokens(tokens, limit, expected) -> None:
    assert cut_output(tokens, limit, {1}) == expected
