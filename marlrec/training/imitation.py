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
import weakref
from typing import NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from marlrec.agents import Agent
from marlrec.envs import Environment, LoggedChoices
from marlrec.envs.logged import LoggedLog, logged_positions
from marlrec.envs.slate import SlateEnvironment
from marlrec.privacy import DPConfig
from marlrec.progress import progress_bar
from marlrec.registry import PluginError
from marlrec.settings import TrainRun
from marlrec.states.sequence import SequenceState
from marlrec.threads import fit_threads

log = logging.getLogger(__name__)

# Seeds the positions drawn, apart from the run's other random streams.
IMITATION_STREAM = 7
# Gradient steps between two TensorBoard points.
LOG_EVERY = 50
# Devices with torch's fused Adam kernel.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def logged_pairs(
    histories: list[np.ndarray], users: np.ndarray, positions: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """The histories before the given (user, position) pairs, and the items logged there."""
    pairs = list(zip(users, positions, strict=True))
    return [histories[u][:p] for u, p in pairs], np.array([histories[u][p] for u, p in pairs])


class LoggedSource(Protocol):
    """Draws of logged choices: `len` logged positions, and the choices at drawn ones."""

    path: str  # how the choices are built, and why

    def __len__(self) -> int: ...

    def choices(self, drawn: np.ndarray, rng: np.random.Generator) -> LoggedChoices: ...


class EnvLog:
    """Logged choices through the env's own `logged_choices`, for envs other than the slate's."""

    def __init__(self, env: Environment, histories: list[np.ndarray]) -> None:
        self.env, self.histories = env, histories
        self.users, self.positions = logged_positions(histories)
        self.path = f"retrieved at every step: env '{type(env).__name__}' builds its own"

    def __len__(self) -> int:
        return len(self.users)

    def choices(self, drawn: np.ndarray, rng: np.random.Generator) -> LoggedChoices:
        pairs = logged_pairs(self.histories, self.users[drawn], self.positions[drawn])
        return self.env.logged_choices(*pairs, rng)


# Each env's logged source, built once: the warm start and the imitation during RL draw from the
# same one (on ML-100K with SASRec candidates, precomputing it takes minutes).
_SOURCES: weakref.WeakKeyDictionary[Environment, tuple[list[np.ndarray], int, LoggedSource]] = (
    weakref.WeakKeyDictionary()
)


def logged_source(env: Environment, histories: list[np.ndarray], cache_mb: int) -> LoggedSource:
    """The slate envs' packed log (the same choices, built faster, precomputed within
    `cache_mb` megabytes when retrieval is fixed); other envs' own method. Logs which path.
    Built once per env, histories and budget; it holds no state that drawing changes."""
    cached = _SOURCES.get(env)
    if cached is not None and cached[0] is histories and cached[1] == cache_mb:
        return cached[2]
    source = _build_source(env, histories, cache_mb)
    _SOURCES[env] = (histories, cache_mb, source)
    return source


def _build_source(env: Environment, histories: list[np.ndarray], cache_mb: int) -> LoggedSource:
    source: LoggedSource
    if type(env).logged_choices is SlateEnvironment.logged_choices:
        assert isinstance(env, SlateEnvironment)
        source = LoggedLog(env.core, histories, cache_mb)
    else:
        source = EnvLog(env, histories)
    log.info("imitation data: %s", source.path)
    return source


class ImitationLoss(NamedTuple):
    """One batch's imitation loss and what it is made of."""

    total: torch.Tensor  # what is minimised: choice + next_item_weight x next_item
    choice: float  # cross-entropy of the logged candidates
    accuracy: float  # share of rows whose logged candidate scores highest
    next_item: float | None  # the state's next-item cross-entropy; None when off


def imitation_losses(agent: Agent, batch: LoggedChoices) -> ImitationLoss:
    """Cross-entropy of the logged candidates under each role's scores and, with a trainable
    sequence state's `next_item_weight` > 0, its next-item cross-entropy over the observations'
    history windows (`SequenceState.next_item_loss`)."""
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
    choice = torch.stack(losses).sum() / len(obs)
    state, weight = next_item_state(agent)
    if state is None:
        return ImitationLoss(choice, float(choice.detach()), correct / len(obs), None)
    item_emb = agent.spec.item_emb.to(agent.device)
    next_item = state.next_item_loss(layout.split(obs)["history"], item_emb)
    total = choice + weight * next_item
    return ImitationLoss(
        total, float(choice.detach()), correct / len(obs), float(next_item.detach())
    )


def imitation_loss(agent: Agent, batch: LoggedChoices) -> tuple[torch.Tensor, float]:
    """`imitation_losses`' total, to minimise, and accuracy."""
    loss = imitation_losses(agent, batch)
    return loss.total, loss.accuracy


def next_item_state(agent: Agent) -> tuple[SequenceState | None, float]:
    """The sequence state the agent's networks train, and its `next_item_weight`, when that
    weight is positive; (None, 0) otherwise."""
    state = getattr(agent.scoring_network(0), "state_model", None)
    if isinstance(state, SequenceState) and state.config.next_item_weight > 0:
        return state, state.config.next_item_weight
    return None, 0.0


def imitation_optimizer(agent: Agent, lr: float) -> torch.optim.Adam:
    """Adam over every role's scoring network, each shared parameter once.

    Fused (one kernel per parameter) where torch has the kernel: the per-tensor Adam issues
    about ten small operations per parameter tensor, which on small imitation batches cost
    more than the networks' own forward and backward.
    """
    parameters = list(
        {
            id(p): p
            for role in range(len(agent.spec.roles))
            for p in agent.scoring_network(role).parameters()
            if p.requires_grad
        }.values()
    )
    fused = all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in parameters)
    return torch.optim.Adam(parameters, lr=lr, fused=fused and bool(parameters))


def imitate(
    agent: Agent, env: Environment, run: TrainRun, dp: DPConfig | None = None
) -> dict[str, float]:
    """`run.trainer.imitation_steps` steps of imitation; summary figures (empty when none).
    Marks the run `imitated` when steps ran (the loop then may validate its policy as epoch 0).

    With `dp` enabled, the steps are DP-SGD over Poisson-sampled users (`marlrec.training.dp`)
    and the summary holds the privacy spent under `dp_*`.
    """
    t = run.trainer
    if t.imitation_steps == 0:
        return {}
    histories = env.ctx.data.train_histories
    source = logged_source(env, histories, t.imitation_cache_mb)
    if len(source) == 0:
        raise PluginError(
            "trainer.imitation_steps needs users with at least two training interactions; "
            f"dataset '{env.ctx.data.name}' has none"
        )
    optimizer = imitation_optimizer(agent, t.imitation_lr)
    rng = np.random.default_rng([run.seed, IMITATION_STREAM])
    private = None
    if dp is not None and dp.enabled:
        from marlrec.training.dp import DPImitation, UserSampler  # Opacus: the privacy extra

        sampler = UserSampler.of(logged_positions(histories)[0], t.batch_size)
        private = DPImitation(agent, optimizer, dp, sampler, t.imitation_steps, run.seed)
    started, retrieved, drawn_total, last = time.perf_counter(), 0, 0, {}
    steps = progress_bar(range(t.imitation_steps), desc="imitation", disable=not t.show_progress)
    for step in steps:
        drawn = private.sampler.draw(rng) if private else rng.integers(0, len(source), t.batch_size)
        drawn_total += len(drawn)
        batch = source.choices(drawn, rng)
        retrieved += len(batch.actions)
        if private is not None:  # every step spends privacy, an empty batch's too
            loss_value, accuracy = private.step(batch)
            last = {"loss": loss_value, "accuracy": accuracy}
        elif len(batch.actions) == 0:
            continue
        else:
            loss = imitation_losses(agent, batch)
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
            last = {"loss": loss.choice, "accuracy": loss.accuracy}
            if loss.next_item is not None:
                last["next_item_loss"] = loss.next_item
        if step % LOG_EVERY == 0 or step == t.imitation_steps - 1:
            for key, value in last.items():
                run.writer.add_scalar(f"imitation/{key}", value, step)
            steps.set_postfix({key: f"{value:.3f}" for key, value in last.items()})
            fit_threads(t.threads)  # jobs started meanwhile take their share of the cores
    seconds = time.perf_counter() - started
    run.imitated = True
    share = retrieved / max(1, drawn_total)
    log.info(
        "imitation: %d steps in %.1f s, logged item retrieved in %.0f%% of draws, last loss %s%s",
        t.imitation_steps,
        seconds,
        100 * share,
        f"{last['loss']:.3f}" if last else "-",
        f", next-item loss {last['next_item_loss']:.3f}" if "next_item_loss" in last else "",
    )
    return {
        "imitation_seconds": seconds,
        "imitation_retrieved": share,
        **{f"imitation_{k}": v for k, v in last.items()},
        **({f"dp_{k}": v for k, v in private.spent().items()} if private else {}),
    }
