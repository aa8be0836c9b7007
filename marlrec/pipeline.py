"""From a composed config to live plugins: data, embeddings, state, simulator, env, agent."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from marlrec import config_source, fitted, registry
from marlrec.agents import Agent
from marlrec.baselines import Baseline
from marlrec.data import RecData, split_from_labels
from marlrec.datasets.splitting import SplitOptions
from marlrec.envs import EnvContext, Environment
from marlrec.evaluation.harness import EvalConfig
from marlrec.privacy import PrivacyConfig, build_privacy_config, load_key, pseudonymise
from marlrec.registry import MarlrecError
from marlrec.settings import LoggerConfig, TrainerConfig
from marlrec.versions import AddedInteractions

GROUPS = tuple(registry.KINDS)  # data-flow order
LIST_GROUPS = tuple(group for group, kind in registry.KINDS.items() if kind.many)


@dataclass(frozen=True)
class Chosen:
    """A chosen plugin: its name, its class and its validated config."""

    group: str
    name: str
    cls: type
    config: Any

    def create(self, **dependencies: Any) -> Any:
        return registry.instantiate(self.group, self.name, self.cls, self.config, **dependencies)


@dataclass(frozen=True)
class RunConfig:
    """A composed config as typed configs: one list of chosen plugins per group, and settings."""

    plugins: dict[str, list[Chosen]]
    trainer: TrainerConfig
    eval: EvalConfig
    logger: LoggerConfig
    privacy: PrivacyConfig

    def one(self, group: str) -> Chosen:
        (chosen,) = self.plugins[group]
        return chosen


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
    privacy: PrivacyConfig
    key: bytes | None = None  # the pseudonyms' secret, when pseudonymised


def sections(cfg: DictConfig, group: str) -> list[dict[str, Any]]:
    """The plain-dict config sections of a group; list groups give one per selected plugin."""
    node = OmegaConf.to_container(cfg[group], resolve=True) if group in cfg else None
    if group in LIST_GROUPS:
        return [{"name": name, **(options or {})} for name, options in (node or {}).items()]
    if not isinstance(node, dict):
        raise MarlrecError(f"config group '{group}' is not selected: set {group}=<name>")
    return [node]


def configure(cfg: DictConfig) -> RunConfig:
    """Check every section of a composed config against its dataclass, once, and build them.

    The one place where config errors are found: unknown keys, wrong types, and the value
    checks of each `Config`'s `__post_init__`, each as one line naming the full key.
    """
    check_run_keys(cfg)
    plugins = {group: [_choose(group, s) for s in sections(cfg, group)] for group in GROUPS}
    if not plugins["reward"]:
        raise MarlrecError("no reward selected: set reward=[click,...]")
    trainer, eval_cfg, logger = settings(cfg)
    privacy = privacy_settings(cfg)
    if privacy.dp.enabled and trainer.max_epochs > 0:
        raise MarlrecError(
            "privacy.dp.enabled=true trains by imitation only: set trainer.max_epochs=0 "
            "(reinforcement learning replays users' sessions outside DP-SGD)"
        )
    check_trainable_encoder(plugins["encoder"][0].config, trainer, privacy)
    if privacy.dp.enabled and importlib.util.find_spec("opacus") is None:
        raise MarlrecError("privacy.dp.enabled=true needs Opacus: pip install 'marlrec[privacy]'")
    return RunConfig(plugins, trainer, eval_cfg, logger, privacy)


def check_trainable_encoder(encoder: Any, trainer: TrainerConfig, privacy: PrivacyConfig) -> None:
    """A trainable encoder learns in this process, with plain optimizers: no DP-SGD, and env
    copies that stay here (worker processes would each hold a stale copy of the model)."""
    trainable = getattr(encoder, "trainable", "frozen")
    if trainable == "frozen":
        return
    if privacy.dp.enabled:
        raise MarlrecError(
            f"privacy.dp.enabled=true trains with DP-SGD, which encoder.trainable={trainable} "
            "does not support: set encoder.trainable=frozen"
        )
    if trainer.vector_env in ("subproc", "ray"):
        raise MarlrecError(
            f"encoder.trainable={trainable} needs env copies in this process: set "
            f"trainer.vector_env=batched or dummy, not {trainer.vector_env}"
        )


MAX_SEED = 2**32 - 1  # numpy's seeds stop here


def check_run_keys(cfg: DictConfig) -> None:
    """The run's own keys, which no plugin's `Config` checks: seed, device and cache_dir."""
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise MarlrecError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    device = cfg.get("device")
    if device != "auto":
        try:
            torch.device(str(device))
        except RuntimeError:
            raise MarlrecError(
                f"device must be auto, cpu, cuda or cuda:<n>, got {device!r}"
            ) from None
    if not isinstance(cfg.get("cache_dir"), str) or not cfg.cache_dir:
        raise MarlrecError(f"cache_dir must be a folder's path, got {cfg.get('cache_dir')!r}")


def _choose(group: str, section: dict[str, Any]) -> Chosen:
    fields = dict(section)
    name = str(fields.pop("name", None))
    cls = registry.load(group, name)
    source = config_source.yaml_file(group, name)
    return Chosen(group, name, cls, registry.build_config(group, name, cls.Config, fields, source))


def settings(cfg: DictConfig) -> tuple[TrainerConfig, EvalConfig, LoggerConfig]:
    def build(group: str, cls: type) -> Any:
        section = OmegaConf.to_container(cfg[group], resolve=True)
        source = config_source.yaml_file(group, config_source.SETTINGS_OPTIONS[group])
        return registry.build_config(group, None, cls, section, source)  # type: ignore[arg-type]

    return (
        build("trainer", TrainerConfig),
        build("eval", EvalConfig),
        build("logger", LoggerConfig),
    )


def privacy_settings(cfg: DictConfig) -> PrivacyConfig:
    """The `privacy` section (all defaults in a config saved before it existed)."""
    if "privacy" not in cfg:
        return PrivacyConfig()
    section = OmegaConf.to_container(cfg.privacy, resolve=True)
    source = config_source.yaml_file("privacy", config_source.SETTINGS_OPTIONS["privacy"])
    return build_privacy_config(section, source)  # type: ignore[arg-type]


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


def _with_new_items(
    data: RecData, item_emb: torch.Tensor, texts: list[str], embeddings: torch.Tensor
) -> tuple[RecData, torch.Tensor]:
    if embeddings.shape != (len(texts), item_emb.shape[1]):
        raise MarlrecError(
            f"{len(texts)} new items with embeddings of shape {tuple(embeddings.shape)}: the "
            f"run's encoder gives {item_emb.shape[1]} numbers per item"
        )
    return data.with_items(texts), torch.cat([item_emb, embeddings.to(item_emb)])


def _with_interactions(
    data: RecData, added: AddedInteractions, data_config: Any, seed: int
) -> RecData:
    """`data` with the interactions that updates added, split again as the dataset splits: the
    held-out items stay each user's latest (leave-one-out) or the latest share (temporal)."""
    top_item = int(added.interactions.item.max(initial=-1))
    if data.n_users != added.base_users or top_item >= data.n_items:
        raise MarlrecError(
            f"the added interactions extend {added.base_users} users, but the run's data now "
            f"has {data.n_users} users and {data.n_items} items"
        )
    ids = added.new_user_ids if data.user_ids is not None else None
    merged = data.with_interactions(added.interactions, ids, added.n_new_users)
    split = SplitOptions.of(data_config, seed) if hasattr(data_config, "split") else SplitOptions()
    labels = split.labels(merged.interactions, merged.n_users)
    return dataclasses.replace(
        merged, split=split_from_labels(merged.interactions, merged.n_users, labels)
    )


def build(
    cfg: DictConfig,
    create_key: bool = False,
    new_items: tuple[list[str], torch.Tensor] | None = None,
    new_interactions: AddedInteractions | None = None,
) -> Pipeline:
    """Instantiate every plugin the config names, in data-flow order.

    With `privacy.pseudonymise`, users are pseudonymised before any plugin sees the data;
    `create_key` makes the key file when there is no key yet (a new training run).
    `new_items` (texts, embeddings) join the catalog after it is encoded, as items nobody has
    consumed yet (a served run's added items): everything downstream sees the larger catalog.
    `new_interactions` (`marlrec update`) join the data after them, which is split again.
    """
    run = configure(cfg)
    seed = int(cfg.seed)
    seed_everything(seed)
    device = resolve_device(str(cfg.device))
    fitted.use_cache_dir(cache_dir(cfg))
    data = run.one("data").create().load(seed=seed, cache_dir=cache_dir(cfg))
    key = load_key(run.privacy, create=create_key) if run.privacy.pseudonymise else None
    data = pseudonymise(data, key) if key is not None else dataclasses.replace(data, user_ids=None)
    if max(run.eval.ks) > data.n_items:
        raise MarlrecError(
            f"eval.ks asks for top-{max(run.eval.ks)} lists, "
            f"but the catalog has {data.n_items} items"
        )
    data = run.eval.cold_start_data(data, seed)
    encoder = run.one("encoder").create(cache_dir=cache_dir(cfg), device=device)
    item_emb = encoder.encode(data.item_text).to(device)
    # The catalog trained on: items added later are beyond any table of per-id parameters.
    n_trained_items = data.n_items
    if new_items is not None:
        data, item_emb = _with_new_items(data, item_emb, *new_items)
    if new_interactions is not None:
        data = _with_interactions(data, new_interactions, run.one("data").config, seed)
    state = (
        run.one("state")
        .create(
            item_dim=item_emb.shape[1],
            item_text=data.item_text,
            encoder=encoder,
            n_items=n_trained_items,
        )
        .to(device)
    )
    tower = encoder.text_tower(data.item_text, item_emb)
    simulator = run.one("simulator").create(data=data, item_emb=item_emb)
    rewards = {c.name: c.create(data=data, item_emb=item_emb) for c in run.plugins["reward"]}
    retriever = run.one("retrieval").create(data=data, item_emb=item_emb)
    if tower is not None:
        tower.on_refresh(retriever.refresh)
    ctx = EnvContext(data, item_emb, state, simulator, rewards, device, retriever, tower)
    env = run.one("env").create(ctx=ctx)
    agent = run.one("agent").create(spec=env.spec, device=device)
    baselines = {
        c.name: c.create(data=data, item_emb=item_emb, seed=seed) for c in run.plugins["baseline"]
    }
    return Pipeline(
        cfg,
        device,
        data,
        item_emb,
        env,
        agent,
        baselines,
        run.trainer,
        run.eval,
        run.logger,
        run.privacy,
        key,
    )
