"""`retention`: 1 for every slate after which the user stays in the session."""

from __future__ import annotations

from marlrec.rewards import Reward, RewardConfig, SlateOutcome


class RetentionReward(Reward):
    """1 when the user stays after the slate, 0 when they leave.

    A session's return from this term is the number of slates the user stayed after, so
    maximising it lengthens sessions. It is meant for simulators whose leave decision depends
    on the slates, above all `response_model` (clicks keep users there); a session that ends
    because it reached the environment's slate limit counts its last slate as stayed.
    """

    Config = RewardConfig

    def score(self, outcome: SlateOutcome) -> float:
        return 0.0 if outcome.leave else 1.0
