"""A finished run's trained policy: loaded from its run dir, recommending and explaining."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from marlrec.agents import checkpoint_path
from marlrec.evaluation.rankers import agent_ranker
from marlrec.pipeline import Pipeline, build
from marlrec.privacy import user_index
from marlrec.registry import MarlrecError


def restore_best(pipeline: Pipeline, run_dir: Path) -> None:
    """Load the policy with the best validation NDCG@10, or the last one if none was kept."""
    path = checkpoint_path(run_dir, "best")
    if not path.is_file():
        path = checkpoint_path(run_dir)
    state = torch.load(path, map_location=pipeline.device, weights_only=False)
    pipeline.agent.load_state_dict(state["agent"])


def load_run(run_dir: Path) -> Pipeline:
    """Rebuild a saved run's pipeline and restore its trained agent."""
    config_file = run_dir / "config.yaml"
    for needed in (config_file, checkpoint_path(run_dir)):
        if not needed.is_file():
            raise MarlrecError(f"{run_dir} is not a finished marlrec run: {needed.name} is missing")
    cfg = OmegaConf.load(config_file)
    assert isinstance(cfg, DictConfig)
    pipeline = build(cfg)
    restore_best(pipeline, run_dir)
    return pipeline


def user_of(p: Pipeline, user: int | str) -> int:
    """The index of a known user: in a pseudonymised run, whose raw id is `user` (mapped
    through its keyed pseudonym); otherwise `user` is the index itself."""
    if p.key is not None:
        index = user_index(p.data, p.key, user)
        if index < 0:
            raise MarlrecError(f"unknown user {user!r}: no user of this run has that id")
        return index
    if not isinstance(user, int) or isinstance(user, bool):
        raise MarlrecError(f"user must be a whole number (the user's index), got {user!r}")
    if not 0 <= user < p.data.n_users:
        raise MarlrecError(f"unknown user {user}: ids run from 0 to {p.data.n_users - 1}")
    return user


def recommend_for(
    p: Pipeline, user: int | str, k: int, expose_history: bool = True
) -> list[dict[str, Any]]:
    """Top-k items for a known user from everything they consumed, each with why it is there
    (naming the history item it is most like only with `expose_history`)."""
    index = user_of(p, user)
    history = p.data.interactions.histories(p.data.n_users)[index]  # everything, held-out too
    top = agent_ranker(p.env, p.agent)(np.array([index]), [history], k)[0].cpu()
    return explain(p, history, top.numpy(), expose_history)


def explain(
    p: Pipeline, history: np.ndarray, items: np.ndarray, expose_history: bool = True
) -> list[dict[str, Any]]:
    """Who placed each item, and which item of the history it is most like."""
    roles, slate = p.env.spec.roles, getattr(p.env, "core", None)
    unit = torch.nn.functional.normalize(p.item_emb, dim=-1)
    similarity = unit[torch.as_tensor(items)] @ unit[torch.as_tensor(history)].T
    rows = []
    for position, item in enumerate(items.tolist()):
        if slate is not None and position < slate.slate_size:
            source = f"chosen by the '{roles[slate.turn_order[position]]}' agent"
        else:
            source = "ranked by the agents' scores after the slate"
        if not len(history):
            because = "no history yet"
        elif not expose_history:
            because = "history hidden (expose_history=true names the closest item)"
        else:
            nearest = int(similarity[position].argmax())
            because = (
                f"like '{p.data.item_text[int(history[nearest])][:70]}' "
                f"(cosine {float(similarity[position, nearest]):.2f})"
            )
        rows.append({"item": item, "text": p.data.item_text[item], "why": f"{source}; {because}"})
    return rows
