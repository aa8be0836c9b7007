"""Differentially private imitation: DP-SGD with user-level accounting (Opacus, the `privacy`
extra: this module is imported only when `privacy.dp.enabled`).

Each step samples users, not interactions: every user joins the batch independently with
probability q = batch_size / users (Poisson sampling, as the accountant assumes), and a user in
the batch contributes one logged choice, drawn among theirs. Each row's gradient is clipped to
`max_grad_norm` and Gaussian noise is added to their sum (Opacus' `DPOptimizer`), so one
user's whole history moves an update by a bounded, noised amount: the (ε, δ) that Opacus' RDP
accountant reports is per user. Per-row gradients come from `torch.func` (vmap over rows), a
row's role picking the network that scores it.

What DP-SGD covers: the scoring networks' weights, trained here. A fitted retriever (EASE,
SASRec) or baseline learns from the data outside DP-SGD; a user's own history still makes
their state and candidates when they are served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from torch.func import functional_call, grad, vmap

from marlrec.agents import Agent
from marlrec.envs import LoggedChoices
from marlrec.privacy import DPConfig
from marlrec.registry import MarlrecError


@dataclass
class UserSampler:
    """Poisson sampling of users, one logged position each (positions as `logged_positions`
    numbers them: grouped by user, in user order)."""

    starts: np.ndarray  # (n eligible users,) each user's first position
    counts: np.ndarray  # (n eligible users,) each user's number of positions
    rate: float

    @classmethod
    def of(cls, position_users: np.ndarray, batch_size: int) -> UserSampler:
        users, starts, counts = np.unique(position_users, return_index=True, return_counts=True)
        if len(users) == 0:
            raise MarlrecError("privacy.dp needs users with at least two training interactions")
        return cls(starts, counts, min(1.0, batch_size / len(users)))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        chosen = np.flatnonzero(rng.random(len(self.starts)) < self.rate)
        within = rng.integers(0, self.counts[chosen])
        return self.starts[chosen] + within


class DPImitation:
    """DP-SGD steps on batches of logged choices, and the privacy they spend."""

    def __init__(
        self,
        agent: Agent,
        optimizer: torch.optim.Optimizer,
        config: DPConfig,
        sampler: UserSampler,
        steps: int,
        seed: int,
    ) -> None:
        self.agent, self.config, self.sampler = agent, config, sampler
        self.noise_multiplier = get_noise_multiplier(
            target_epsilon=config.epsilon,
            target_delta=config.delta,
            sample_rate=sampler.rate,
            steps=steps,
            accountant="rdp",
        )
        expected = max(1, round(sampler.rate * len(sampler.starts)))
        generator = torch.Generator(device=agent.device).manual_seed(seed)
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=expected,
            generator=generator,
        )
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.accountant = RDPAccountant()

    def step(self, batch: LoggedChoices) -> tuple[float, float]:
        """One noised, clipped update; the batch's mean loss and accuracy (0, 0 if empty)."""
        loss, accuracy = self._per_sample_gradients(batch)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sampler.rate)
        return loss, accuracy

    def spent(self) -> dict[str, float]:
        """ε spent so far at the target δ, and the noise that bought it."""
        epsilon = self.accountant.get_epsilon(self.config.delta) if self.accountant.history else 0.0
        return {
            "epsilon": float(epsilon),
            "delta": self.config.delta,
            "noise_multiplier": float(self.noise_multiplier),
            "sample_rate": self.sampler.rate,
            "max_grad_norm": self.config.max_grad_norm,
        }

    def _per_sample_gradients(self, batch: LoggedChoices) -> tuple[float, float]:
        """Set each parameter's `grad_sample` (rows, *shape): every row's own gradient."""
        n = len(batch.actions)
        samples = {id(p): torch.zeros((n, *p.shape), device=p.device) for p in self.params}
        obs = batch.obs.to(self.agent.device)
        actions = batch.actions.to(self.agent.device)
        total_loss, correct = 0.0, 0.0
        layout = self.agent.spec.layout
        for role in batch.roles.unique().tolist() if n else []:
            rows = (batch.roles == role).to(self.agent.device)
            net = self.agent.scoring_network(role)
            named = {k: v for k, v in net.named_parameters() if v.requires_grad}
            buffers = dict(net.named_buffers())

            def row_loss(
                params: dict[str, torch.Tensor],
                one_obs: torch.Tensor,
                action: torch.Tensor,
                net: torch.nn.Module = net,
                buffers: dict[str, torch.Tensor] = buffers,
            ) -> torch.Tensor:
                scores = functional_call(net, (params, buffers), (one_obs[None],))[0]
                available = layout.split(one_obs[None])["chosen"] == 0
                scores = scores.masked_fill(~available, -1e9)
                return F.cross_entropy(scores, action[None])

            detached = {k: v.detach() for k, v in named.items()}
            grads = vmap(grad(row_loss), in_dims=(None, 0, 0))(detached, obs[rows], actions[rows])
            index = rows.nonzero().squeeze(1)
            for name, param in named.items():
                samples[id(param)][index] += grads[name]
            with torch.no_grad():
                scores = net(obs[rows])[0].masked_fill(layout.split(obs[rows])["chosen"] != 0, -1e9)
                total_loss += float(F.cross_entropy(scores, actions[rows], reduction="sum"))
                correct += float((scores.argmax(dim=1) == actions[rows]).sum())
        for p in self.params:
            p.grad_sample = samples[id(p)]
        return (total_loss / n, correct / n) if n else (0.0, 0.0)


def check_dp_supported(agent: Agent) -> None:
    """Refuse what DP-SGD here cannot cover, in one line, rather than report a false ε (RL is
    refused with the config, `marlrec.pipeline.configure`)."""
    if RDPAccountant is None:
        raise MarlrecError("privacy.dp.enabled=true needs Opacus: pip install 'marlrec[privacy]'")
    state = agent.spec.state
    if any(p.requires_grad for p in state.parameters()):
        raise MarlrecError(
            "privacy.dp.enabled=true needs a state model without trainable weights "
            "(state=mean): per-user gradients are computed for the scoring networks only"
        )
