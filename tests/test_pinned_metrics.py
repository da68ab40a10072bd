"""Behaviour pinned across refactors: tiny configs give the metrics recorded on the reference commit
(tests/fixtures/make_pinned_metrics.py, 1 torch thread on CPU). A change to the algorithm, the seeding
or the order of random draws moves them; a change of structure alone does not."""

import json
from pathlib import Path

import pytest
from fixtures.make_pinned_metrics import PINNED_RUNS, pinned_metrics

PINNED = json.loads((Path(__file__).parent / "fixtures" / "pinned_metrics.json").read_text())


@pytest.mark.parametrize("name", sorted(PINNED_RUNS))
def test_tiny_config_metrics_are_pinned(name, tiny_generator_path, tmp_path):
    got = pinned_metrics(tiny_generator_path, tmp_path, PINNED_RUNS[name])
    want = PINNED[name]
    assert set(got) == set(want)
    moved = {k: (want[k], got[k]) for k in want if got[k] != pytest.approx(want[k], rel=1e-5, abs=1e-7)}
    assert not moved, f"{name}: metrics moved (recorded, now): {moved}"
