"""Imitation that goes on during reinforcement learning, so that RL adds to what it taught.

Imitation warms the scoring networks up on the logged next items; RL from a sparse click
signal then tends to erode what they learnt (measured on ML-100K: Q-learning after imitation
fell below the retriever it reranks). With `trainer.imitation_steps_per_update` > 0, every
collect-and-update step of RL is followed by that many imitation steps on fresh batches of
logged choices, by their own Adam: behaviour cloning as an auxiliary loss, optimised in turns
with the RL loss (as the supervised head of Xin et al. 2020 is trained beside the Q-head).

Its optimiser, its random stream and its step count are part of the resume checkpoint, so a
resumed run draws the same batches as one never interrupted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marlrec.agents import Agent
from marlrec.envs import Environment
from marlrec.settings import TrainRun
from marlrec.training.imitation import imitation_loss, imitation_optimizer, logged_source

# Seeds the batches drawn during RL, apart from the warm start's stream (7) and the others.
ANCHOR_STREAM = 8
# Imitation steps between two TensorBoard points.
LOG_EVERY = 50


class ImitationAnchor:
    """Imitation steps on demand, between RL updates."""

    def __init__(self, agent: Agent, env: Environment, run: TrainRun) -> None:
        self.agent, self.run = agent, run
        self.source = logged_source(
            env, env.ctx.data.train_histories, run.trainer.imitation_cache_mb
        )
        self.optimizer = imitation_optimizer(agent, run.trainer.imitation_lr)
        self.rng = np.random.default_rng([run.seed, ANCHOR_STREAM])
        self.steps = 0

    def step(self, n: int) -> None:
        """`n` imitation steps, each on `trainer.batch_size` logged choices."""
        if len(self.source) == 0:
            return
        for _ in range(n):
            drawn = self.rng.integers(0, len(self.source), self.run.trainer.batch_size)
            batch = self.source.choices(drawn, self.rng)
            if len(batch.actions) == 0:
                continue
            loss, accuracy = imitation_loss(self.agent, batch)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            if self.steps % LOG_EVERY == 0:
                loss_value = loss.detach().item()
                self.run.writer.add_scalar("imitation_during_rl/loss", loss_value, self.steps)
                self.run.writer.add_scalar("imitation_during_rl/accuracy", accuracy, self.steps)
            self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.steps = state["steps"]
