"""`click`: the number of clicked items in the slate."""

from __future__ import annotations

from marlrec.rewards import Reward, SlateOutcome


class ClickReward(Reward):
    def score(self, outcome: SlateOutcome) -> float:
        return float(outcome.clicks.sum())
