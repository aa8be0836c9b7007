"""The ML-100K benchmark's rule for replacing the preset: a lead on validation beyond noise."""

import numpy as np
import pytest
from scipy import stats

from benchmarks.ml100k import (
    IMITATION_ONLY,
    PRESET,
    SELECTED_ON,
    TESTED_ON,
    against_imitation,
    leads_over_preset,
    user_paired,
)


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


def _users(*seeds: list[float]) -> list[dict[str, np.ndarray]]:
    return [{SELECTED_ON: np.array(v), TESTED_ON: np.array(v) / 2} for v in seeds]


def test_user_by_user_pools_each_seed_s_users_with_the_same_seed_s_run() -> None:
    users = {
        PRESET: _users([0.1, 0.2, 0.3], [0.2, 0.2, 0.2]),
        "ippo": _users([0.2, 0.2, 0.4], [0.2, 0.3, 0.3]),  # differences 0.1, 0, 0.1; 0, 0.1, 0.1
    }
    paired = user_paired(users, PRESET, "ippo", SELECTED_ON)
    differences = np.array([0.1, 0.0, 0.1, 0.0, 0.1, 0.1])
    assert paired["difference"] == pytest.approx(differences.mean())
    assert paired["p"] == pytest.approx(stats.ttest_1samp(differences, 0.0).pvalue)
    one_sided = user_paired(users, PRESET, "ippo", SELECTED_ON, alternative="greater")
    assert one_sided["p"] == pytest.approx(paired["p"] / 2)


def test_against_imitation_gives_rl_s_change_relative_to_imitation_only() -> None:
    per_seed = {
        IMITATION_ONLY: [{SELECTED_ON: 0.2, TESTED_ON: 0.1, "sim/mean_return": 2.0}] * 2,
        PRESET: [{SELECTED_ON: 0.2, TESTED_ON: 0.1, "sim/mean_return": 2.2}] * 2,
        "sasrec": [{SELECTED_ON: 0.1, TESTED_ON: 0.1, "sim/mean_return": 1.0}] * 2,
    }
    users = {
        IMITATION_ONLY: _users([0.2, 0.2], [0.2, 0.2]),
        PRESET: _users([0.2, 0.2], [0.2, 0.2]),  # the same users' figures: RL changed nothing
    }
    rows = against_imitation(per_seed, users)
    assert set(rows) == {PRESET}  # baselines are not compared
    assert rows[PRESET] == pytest.approx(
        {"valid": 0.0, "valid p": 1.0, "test": 0.0, "test p": 1.0, "return": 0.1}
    )


def test_with_users_a_lead_also_carries_its_per_user_test_and_the_test_difference() -> None:
    per_seed = {PRESET: _rows(0.130, 0.125), "ippo": _rows(0.134, 0.128)}
    users = {
        PRESET: _users([0.1, 0.2, 0.3], [0.2, 0.2, 0.2]),
        "ippo": _users([0.2, 0.2, 0.4], [0.2, 0.3, 0.3]),
    }
    lead = leads_over_preset(per_seed, users)["ippo"]
    assert lead["p per user"] == user_paired(users, PRESET, "ippo", SELECTED_ON, "greater")["p"]
    assert lead["test"] == pytest.approx(np.mean([0.1, 0.0, 0.1, 0.0, 0.1, 0.1]) / 2)
    assert lead["test p"] == user_paired(users, PRESET, "ippo", TESTED_ON)["p"]
