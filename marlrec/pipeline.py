"""From a composed config to live plugins: data, embeddings, state, simulator, env, agent."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from marlrec import fitted, registry
from marlrec.agents import Agent
from marlrec.baselines import Baseline
from marlrec.data import RecData
from marlrec.envs import EnvContext, Environment
from marlrec.evaluation.harness import EvalConfig
from marlrec.registry import MarlrecError
from marlrec.settings import LoggerConfig, TrainerConfig

SINGLE_GROUPS = ("data", "encoder", "state", "env", "simulator", "agent")
LIST_GROUPS = ("reward", "baseline")


@dataclass
class Pipeline:
    cfg: DictConfig
    device: torch.device
    data: RecData
    item_emb: torch.Tensor
    env: Environment
    agent: Agent
    baselines: dict[str, Baseline]
    trainer: TrainerConfig
    eval: EvalConfig
    logger: LoggerConfig


def sections(cfg: DictConfig, group: str) -> list[dict[str, Any]]:
    """The plain-dict config sections of a group; list groups give one per selected plugin."""
    node = OmegaConf.to_container(cfg[group], resolve=True) if group in cfg else None
    if group in LIST_GROUPS:
        return [{"name": name, **(options or {})} for name, options in (node or {}).items()]
    if not isinstance(node, dict):
        raise MarlrecError(f"config group '{group}' is not selected: set {group}=<name>")
    return [node]


def validate(cfg: DictConfig) -> None:
    """Check every section against its plugin's `Config` without building anything."""
    for group in SINGLE_GROUPS + LIST_GROUPS:
        for section in sections(cfg, group):
            fields = dict(section)
            name = fields.pop("name", None)
            cls = registry.load(group, str(name))
            registry.build_config(group, str(name), cls.Config, fields)
    settings(cfg)


def settings(cfg: DictConfig) -> tuple[TrainerConfig, EvalConfig, LoggerConfig]:
    def section(group: str) -> dict[str, Any]:
        return OmegaConf.to_container(cfg[group], resolve=True)  # type: ignore[return-value]

    return (
        registry.build_config("trainer", None, TrainerConfig, section("trainer")),
        registry.build_config("eval", None, EvalConfig, section("eval")),
        registry.build_config("logger", None, LoggerConfig, section("logger")),
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MarlrecError(f"device={name} asked for CUDA, but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.cache_dir)).expanduser()


def build(cfg: DictConfig) -> Pipeline:
    """Instantiate every plugin the config names, in data-flow order."""
    validate(cfg)
    trainer, eval_cfg, logger = settings(cfg)
    seed = int(cfg.seed)
    seed_everything(seed)
    device = resolve_device(str(cfg.device))
    fitted.use_cache_dir(cache_dir(cfg))
    (data_section,) = sections(cfg, "data")
    data = registry.create("data", data_section).load(seed=seed, cache_dir=cache_dir(cfg))
    (encoder_section,) = sections(cfg, "encoder")
    encoder = registry.create("encoder", encoder_section, cache_dir=cache_dir(cfg), device=device)
    item_emb = encoder.encode(data.item_text).to(device)
    (state_section,) = sections(cfg, "state")
    state = registry.create(
        "state",
        state_section,
        item_dim=item_emb.shape[1],
        item_text=data.item_text,
        encoder=encoder,
    ).to(device)
    (simulator_section,) = sections(cfg, "simulator")
    simulator = registry.create("simulator", simulator_section, data=data, item_emb=item_emb)
    rewards = {
        s["name"]: registry.create("reward", s, data=data, item_emb=item_emb)
        for s in sections(cfg, "reward")
    }
    if not rewards:
        raise MarlrecError("no reward selected: set reward=[click,...]")
    ctx = EnvContext(data, item_emb, state, simulator, rewards, device)
    (env_section,) = sections(cfg, "env")
    env = registry.create("env", env_section, ctx=ctx)
    (agent_section,) = sections(cfg, "agent")
    agent = registry.create("agent", agent_section, spec=env.spec, device=device)
    baselines = {
        s["name"]: registry.create("baseline", s, data=data, item_emb=item_emb, seed=seed)
        for s in sections(cfg, "baseline")
    }
    return Pipeline(cfg, device, data, item_emb, env, agent, baselines, trainer, eval_cfg, logger)
