"""The ML-100K benchmark's rule for replacing the preset: a lead on validation beyond noise."""

import pytest

from benchmarks.ml100k import PRESET, SELECTED_ON, leads_over_preset


def _rows(*valid: float) -> list[dict[str, float]]:
    return [{SELECTED_ON: v} for v in valid]


def test_a_configuration_leads_the_preset_only_beyond_what_seeds_move() -> None:
    per_seed = {
        PRESET: _rows(0.130, 0.125, 0.132),
        "ippo": _rows(0.134, 0.128, 0.137),  # ahead by 0.003 to 0.005 on every seed
        "idqn": _rows(0.133, 0.123, 0.133),  # ahead on the mean, behind on one seed
        "sasrec": _rows(0.110, 0.108, 0.112),  # a baseline: not a candidate for the preset
    }
    leads = leads_over_preset(per_seed)
    assert set(leads) == {"ippo", "idqn"}
    assert leads["ippo"]["lead"] == pytest.approx(0.004)
    assert leads["ippo"]["p"] < 0.05 < leads["idqn"]["p"]
    assert leads["idqn"]["lead"] > 0


def test_a_configuration_missing_a_seed_is_not_compared() -> None:
    per_seed = {PRESET: _rows(0.130, 0.125, 0.132), "ippo": _rows(0.134, 0.128)}
    assert leads_over_preset(per_seed) == {}
