"""Imitation of logged choices: a supervised warm start of the agents' scoring networks.

Reinforcement learning from a simulator starts from networks that know nothing of the items,
and clicks are a sparse, noisy signal to learn item affinities from. The training interactions
already say which item each user picked next. Before any environment step, every role's
scoring network learns by cross-entropy to put the logged next item first among the
candidates retrieved for the history before it (behaviour cloning, as the supervised head of
Xin et al. 2020, "Self-Supervised Reinforcement Learning for Recommender Systems"); RL then
fine-tunes the same networks for the session's return.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from marlrec.agents import Agent
from marlrec.envs import Environment, LoggedChoices
from marlrec.registry import PluginError
from marlrec.settings import TrainRun

log = logging.getLogger(__name__)

# Seeds the positions drawn, apart from the run's other random streams.
IMITATION_STREAM = 7
# Gradient steps between two TensorBoard points.
LOG_EVERY = 50


def logged_positions(histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every (user, position) whose item follows at least one earlier training item."""
    followers = np.maximum(np.array([len(h) for h in histories]) - 1, 0)
    users = np.repeat(np.arange(len(histories)), followers)
    starts = np.cumsum(followers) - followers
    return users, np.arange(len(users)) - starts[users] + 1


def logged_pairs(
    histories: list[np.ndarray], users: np.ndarray, positions: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """The histories before the given (user, position) pairs, and the items logged there."""
    pairs = list(zip(users, positions, strict=True))
    return [histories[u][:p] for u, p in pairs], np.array([histories[u][p] for u, p in pairs])


def imitation_loss(agent: Agent, batch: LoggedChoices) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the logged candidates under each role's scores, and the share of rows
    whose logged candidate scores highest."""
    layout = agent.spec.layout
    obs = batch.obs.to(agent.device)
    actions = batch.actions.to(agent.device)
    losses, correct = [], 0.0
    for role in batch.roles.unique().tolist():
        rows = (batch.roles == role).to(agent.device)
        scores = agent.scoring_network(role)(obs[rows])[0]
        available = layout.split(obs[rows])["chosen"] == 0
        scores = scores.masked_fill(~available, -1e9)
        losses.append(F.cross_entropy(scores, actions[rows], reduction="sum"))
        correct += float((scores.argmax(dim=1) == actions[rows]).sum())
    return torch.stack(losses).sum() / len(obs), correct / len(obs)


def imitate(agent: Agent, env: Environment, run: TrainRun) -> dict[str, float]:
    """`run.trainer.imitation_steps` steps of imitation; summary figures (empty when none)."""
    t = run.trainer
    if t.imitation_steps == 0:
        return {}
    histories = env.ctx.data.train_histories
    users, positions = logged_positions(histories)
    if len(users) == 0:
        raise PluginError(
            "trainer.imitation_steps needs users with at least two training interactions; "
            f"dataset '{env.ctx.data.name}' has none"
        )
    parameters = {
        id(p): p
        for role in range(len(agent.spec.roles))
        for p in agent.scoring_network(role).parameters()
        if p.requires_grad
    }
    optimizer = torch.optim.Adam(list(parameters.values()), lr=t.imitation_lr)
    rng = np.random.default_rng([run.seed, IMITATION_STREAM])
    started, retrieved, last = time.perf_counter(), 0, {}
    steps = tqdm(range(t.imitation_steps), desc="imitation", disable=not t.show_progress)
    for step in steps:
        drawn = rng.integers(0, len(users), t.batch_size)
        batch = env.logged_choices(*logged_pairs(histories, users[drawn], positions[drawn]), rng)
        retrieved += len(batch.actions)
        if len(batch.actions) == 0:
            continue
        loss, accuracy = imitation_loss(agent, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = {"loss": float(loss.detach()), "accuracy": accuracy}
        if step % LOG_EVERY == 0 or step == t.imitation_steps - 1:
            run.writer.add_scalar("imitation/loss", last["loss"], step)
            run.writer.add_scalar("imitation/accuracy", accuracy, step)
            steps.set_postfix(loss=f"{last['loss']:.3f}", accuracy=f"{accuracy:.2f}")
    seconds = time.perf_counter() - started
    share = retrieved / (t.imitation_steps * t.batch_size)
    log.info(
        "imitation: %d steps in %.1f s, logged item retrieved in %.0f%% of draws, last loss %s",
        t.imitation_steps,
        seconds,
        100 * share,
        f"{last['loss']:.3f}" if last else "-",
    )
    return {
        "imitation_seconds": seconds,
        "imitation_retrieved": share,
        **{f"imitation_{k}": v for k, v in last.items()},
    }
