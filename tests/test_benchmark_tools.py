"""The computed references that benchmark tables are compared with."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

from tabular_optimum import optimal_return


def test_the_optimum_of_a_deterministic_lake_is_certain_success_once_the_path_fits():
    solid = {"is_slippery": False}
    assert optimal_return("FrozenLake-v1", solid) == 1.0
    assert optimal_return("FrozenLake-v1", solid, horizon=5) == 0.0  # the path takes 6 steps


def test_the_slippery_lakes_best_success_rate_is_below_one():
    assert optimal_return("FrozenLake-v1") == pytest.approx(0.7442, abs=1e-4)
