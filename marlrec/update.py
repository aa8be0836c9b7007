"""`marlrec update`: learn from newly logged interactions without retraining from scratch.

The log is a CSV file with a header: `user,item,timestamp` and optionally `rating` (the
value; 1 when absent), the columns of a MovieLens `u.data`. `user` is a user as `marlrec
recommend user=` takes it: the outside id in a pseudonymised run, else the index; an unknown
outside id is a new user, and in a run known by index the new users take the next indices
(n_users, n_users + 1, ...). `item` is a catalog id (the dataset's own item id where it has
one, else the item number) or the id of an added item; items no run version knows are new and
need their text, given as `marlrec add-items` takes it (`items=new_items.csv`: id, title, any
text fields).

The interactions join the run's dataset, which is split again as the dataset splits (so
leave-one-out still holds out each user's latest); the new version starts from the served
one's agent and imitates for a bounded number of steps, each batch drawing half its logged
choices among the positions the served version never trained on (the new interactions and
those it held out) and half among the rest (replay, against forgetting); its validation
NDCG@10 is measured before the first step, half way and at the end, and the best is kept, so a
version never serves a policy that validates worse than its parent did on the new split.
The version is written under `versions/<n>/` and served from then on (`marlrec.versions`).
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from marlrec.agents import checkpoint_path
from marlrec.data import Interactions, RecData
from marlrec.envs.logged import logged_positions
from marlrec.io import write_json
from marlrec.pipeline import Pipeline
from marlrec.privacy import pseudonym
from marlrec.progress import progress_bar
from marlrec.recommend import (
    AddedItems,
    build_version,
    embed_texts,
    item_texts,
    load_run,
    read_csv_strings,
    read_items_file,
    text_encoder,
)
from marlrec.registry import MarlrecError
from marlrec.run import save_checkpoint, validation
from marlrec.training.imitation import imitation_loss, imitation_optimizer, logged_source
from marlrec.versions import (
    AddedInteractions,
    current_version,
    next_version,
    publish,
    staging_dir,
    version_dir,
)

log = logging.getLogger(__name__)

LOG_COLUMNS = ("user", "item", "rating", "timestamp")
REQUIRED_COLUMNS = ("user", "item", "timestamp")
UPDATE_JSON = "update.json"
UPDATE_STREAM = 11  # the update's draws, apart from the run's other random streams
PASSES = 2  # default budget: each fresh logged choice drawn about this many times
MIN_STEPS = 20
VALIDATIONS = 2  # validations over the steps (half way, at the end), beside one before


@dataclass(frozen=True)
class UpdateOptions:
    """The fine-tuning budget and what to do with interactions the run already has."""

    steps: int | None = None
    """Imitation steps; None: PASSES draws of each fresh choice, at most the run's
    trainer.imitation_steps and at least MIN_STEPS."""
    replay: float = 0.5
    """Share of each batch drawn among logged choices the served version trained on."""
    lr: float | None = None
    """Learning rate; None: the run's trainer.imitation_lr."""
    force: bool = False
    """Skip interactions already in the run instead of refusing the log."""


@dataclass(frozen=True)
class Log:
    """The log's rows in file order: raw user and item ids, times, values, file lines."""

    users: list[str]
    items: list[str]
    time: np.ndarray
    value: np.ndarray
    lines: np.ndarray


def read_log(path: Path) -> Log:
    """The rows of a log CSV file; a one-line error names the file, the line and the column."""
    table = read_csv_strings(path)
    columns = [str(c).strip() for c in table.columns]
    unknown = [c for c in columns if c not in LOG_COLUMNS]
    if unknown:
        raise MarlrecError(
            f"{path} has an unknown column '{unknown[0]}'; columns: {', '.join(LOG_COLUMNS)}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise MarlrecError(
            f"{path} has no '{missing[0]}' column; columns: user, item, timestamp, rating "
            "(optional)"
        )
    table.columns = columns
    if table.empty:
        raise MarlrecError(f"{path} lists no interactions")
    lines = np.arange(len(table)) + 2  # the header is line 1
    for column in ("user", "item"):
        empty = np.flatnonzero(table[column].str.strip() == "")
        if len(empty):
            raise MarlrecError(f"{path}, line {lines[empty[0]]}: the {column} is empty")
    time_ = _numbers(table["timestamp"], path, lines, "timestamp")
    rating = table["rating"] if "rating" in table else pd.Series(["1"] * len(table))
    value = _numbers(rating, path, lines, "rating").astype(np.float32)
    return Log(
        users=[u.strip() for u in table["user"]],
        items=[i.strip() for i in table["item"]],
        time=time_,
        value=value,
        lines=lines,
    )


def _numbers(column: pd.Series, path: Path, lines: np.ndarray, name: str) -> np.ndarray:
    """The column as float64, parsed exactly (as Python parses them: a time written with
    `repr` reads back equal); one line for the first text that is not a finite number."""
    numbers = np.empty(len(column), np.float64)
    for row, text in enumerate(column):
        try:
            numbers[row] = float(text)
        except ValueError:
            numbers[row] = np.nan
        if not np.isfinite(numbers[row]):
            raise MarlrecError(f"{path}, line {lines[row]}: {name} {text!r} is not a number")
    return numbers


@dataclass(frozen=True)
class Resolved:
    """The log in the run's numbering: new users and items appended after the known ones."""

    interactions: Interactions  # sorted by (user, time)
    new_user_ids: list[str]  # pseudonyms of the new users (empty when known by index)
    n_new_users: int
    new_item_ids: list[str]
    new_item_texts: list[str]
    skipped: int  # interactions already in the run, left out with force


def resolve(
    p: Pipeline,
    added: AddedItems,
    entries: Log,
    items: tuple[list[dict[str, str]], str],
    where: str,
    force: bool,
) -> Resolved:
    """Number the log's users and items as the run does; one-line errors for what cannot be.
    `items`: the new items' rows and the file they come from."""
    users, new_user_ids, n_new_users = _users(p, entries, where)
    rows, items_where = items
    new_ids, new_texts = item_texts(rows, items_where, set(added.ids)) if rows else ([], [])
    numbers = _items(p, added, entries, (new_ids, items_where), where)
    keys = pd.MultiIndex.from_arrays([users, numbers, entries.time])
    repeated = np.flatnonzero(keys.duplicated())
    if len(repeated):
        raise MarlrecError(
            f"{where}, line {entries.lines[repeated[0]]}: the same interaction (user, item, "
            "timestamp) is listed twice"
        )
    data = p.data.interactions
    known = keys.isin(pd.MultiIndex.from_arrays([data.user, data.item, data.time]))
    if known.any() and not force:
        line = entries.lines[np.flatnonzero(known)[0]]
        raise MarlrecError(
            f"{where}, line {line}: this interaction (user, item, timestamp) is already in the "
            f"run ({int(known.sum())} of the log's are); force=true leaves them out"
        )
    keep = ~known
    if not keep.any():
        raise MarlrecError(f"{where}: every interaction of the log is already in the run")
    order = np.lexsort((entries.time[keep], users[keep]))
    part = Interactions(
        user=users[keep][order],
        item=numbers[keep][order],
        time=entries.time[keep][order],
        value=entries.value[keep][order],
    )
    return Resolved(part, new_user_ids, n_new_users, new_ids, new_texts, int(known.sum()))


def _users(p: Pipeline, entries: Log, where: str) -> tuple[np.ndarray, list[str], int]:
    """Each row's user index; the new users' ids (pseudonyms) and how many there are."""
    n = p.data.n_users
    if p.key is not None:
        names = [pseudonym(p.key, u) for u in entries.users]
        index = p.data.user_index_of_id
        new: dict[str, int] = {}
        for name in names:
            if name not in index and name not in new:
                new[name] = n + len(new)
        return (
            np.array([index.get(u, new.get(u, -1)) for u in names], np.int64),
            list(new),
            len(new),
        )
    numbers = []
    for user, line in zip(entries.users, entries.lines, strict=True):
        if not user.isdigit():
            raise MarlrecError(
                f"{where}, line {line}: user {user!r} is not a user index (a whole number "
                "from 0): this run knows its users by index"
            )
        numbers.append(int(user))
    users = np.array(numbers, np.int64)
    fresh = np.unique(users[users >= n])
    if len(fresh) and not np.array_equal(fresh, np.arange(n, n + len(fresh))):
        gap = next(u for i, u in enumerate(fresh.tolist()) if u != n + i)
        line = entries.lines[np.flatnonzero(users == gap)[0]]
        raise MarlrecError(
            f"{where}, line {line}: user {gap} is new, but new users take the next indices "
            f"in turn, from {n}"
        )
    return users, [], len(fresh)


def _items(
    p: Pipeline, added: AddedItems, entries: Log, new: tuple[list[str], str], where: str
) -> np.ndarray:
    """Each row's item number: a catalog id, an added item's id, or a new item's (`new`: their
    ids and the file naming them)."""
    new_ids, items_where = new
    n_items = p.data.n_items
    base = n_items - len(added.ids)
    raw = p.data.item_attributes.get("raw_id")
    catalog = {str(r): i for i, r in enumerate(raw[:base].tolist())} if raw is not None else None
    numbers = {**{item: base + i for i, item in enumerate(added.ids)}}
    for i, item in enumerate(new_ids):
        numbered = catalog is None and item.isdigit() and int(item) < base
        if item in (catalog or {}) or numbered:
            raise MarlrecError(f"{items_where}: item id {item!r} is already in the run's catalog")
        numbers[item] = n_items + i
    result = np.empty(len(entries.items), np.int64)
    for row, (item, line) in enumerate(zip(entries.items, entries.lines, strict=True)):
        number = numbers.get(item)
        if number is None and catalog is not None:
            number = catalog.get(item)
        if number is None and catalog is None and item.isdigit() and int(item) < base:
            number = int(item)
        if number is None:
            raise MarlrecError(
                f"{where}, line {line}: unknown item {item!r}; describe new items in "
                "items=new_items.csv (columns: id, title, any text)"
            )
        result[row] = number
    return result


def update_run(
    run_dir: Path,
    log_path: Path,
    items_path: Path | None = None,
    options: UpdateOptions | None = None,
) -> dict[str, Any]:
    """Write and serve a new version of the run that has learnt from the log; its update.json."""
    options = options or UpdateOptions()
    if not 0 <= options.replay < 1:
        raise MarlrecError(f"replay must be at least 0 and below 1, got {options.replay}")
    entries = read_log(log_path)  # malformed files fail before minutes of loading
    rows = read_items_file(items_path) if items_path is not None else []
    started = time.perf_counter()
    parent = current_version(run_dir)
    served = load_run(run_dir)
    loaded = time.perf_counter()
    if served.eval.protocol not in ("full", "sampled"):
        raise MarlrecError(
            f"eval.protocol={served.eval.protocol} reshapes the dataset for cold-start "
            "evaluation; an update adds to the dataset as it is: update a full-protocol run"
        )
    before = AddedItems.load(version_dir(run_dir, parent))
    items = (rows, str(items_path))
    resolved = resolve(served, before, entries, items, str(log_path), options.force)
    staging = staging_dir(run_dir)
    try:
        _write_additions(run_dir, parent, served, before, resolved, staging)
        updated = build_version(run_dir, staging)
        built = time.perf_counter()
        updated.agent.load_state_dict(served.agent.state_dict())
        tuned = fine_tune(updated, served.data, options)
        tuned_at = time.perf_counter()
        save_checkpoint(updated, checkpoint_path(staging), None)  # the last step's policy
        updated.agent.load_state_dict(tuned.pop("best_state"))
        save_checkpoint(updated, checkpoint_path(staging, "best"), None)
        version = next_version(run_dir)
        report = {
            "version": version,
            "parent": parent,
            "log": str(log_path),
            "interactions": len(resolved.interactions),
            "skipped_already_in_run": resolved.skipped,
            "new_users": resolved.n_new_users,
            "new_items": len(resolved.new_item_ids),
            **tuned,
            "seconds": time.perf_counter() - started,
            "seconds_loading_served": loaded - started,
            "seconds_building_new": built - loaded,
            "seconds_fine_tuning": tuned_at - built,
        }
        write_json(staging / UPDATE_JSON, report)
        publish(run_dir, staging, version)
    finally:
        if staging.exists():  # anything but a published version
            shutil.rmtree(staging, ignore_errors=True)
    return report


def _write_additions(
    run_dir: Path,
    parent: int,
    served: Pipeline,
    before: AddedItems,
    resolved: Resolved,
    staging: Path,
) -> None:
    """The items and interactions the new version adds to the dataset, all versions' so far."""
    items = before
    if resolved.new_item_ids:
        new = embed_texts(served, text_encoder(served), resolved.new_item_texts).float()
        base = served.data.n_items - len(before.ids)
        items = AddedItems(
            base,
            [*before.ids, *resolved.new_item_ids],
            [*before.texts, *resolved.new_item_texts],
            torch.cat([before.embeddings.reshape(-1, new.shape[1]), new]),
        )
    if items.ids:
        items.save(staging)
    earlier = AddedInteractions.load(version_dir(run_dir, parent))
    part = resolved.interactions
    if earlier is not None:
        old = earlier.interactions
        part = Interactions(
            user=np.concatenate([old.user, part.user]),
            item=np.concatenate([old.item, part.item]),
            time=np.concatenate([old.time, part.time]),
            value=np.concatenate([old.value, part.value]),
        )
    base_users = earlier.base_users if earlier else served.data.n_users
    ids = [*(earlier.new_user_ids.tolist() if earlier else []), *resolved.new_user_ids]
    n_new = (earlier.n_new_users if earlier else 0) + resolved.n_new_users
    AddedInteractions(base_users, part, n_new, np.array(ids, dtype=str)).save(staging)


def fresh_choices(data: RecData, before: RecData) -> np.ndarray:
    """Per logged position of `data`'s training histories (`logged_positions` order), whether
    `before` did not train on it: a new interaction, or one it held out."""
    train = data.split.train
    old = before.split.train
    seen = pd.MultiIndex.from_arrays([train.user, train.item, train.time]).isin(
        pd.MultiIndex.from_arrays([old.user, old.item, old.time])
    )
    users, positions = logged_positions(data.train_histories)
    bounds = np.searchsorted(train.user, np.arange(data.n_users + 1))
    return ~seen[bounds[users] + positions]


def default_steps(p: Pipeline, n_fresh: int, replay: float) -> int:
    per_step = max(1.0, p.trainer.batch_size * (1 - replay))
    steps = math.ceil(PASSES * n_fresh / per_step)
    return max(MIN_STEPS, min(steps, p.trainer.imitation_steps))


def fine_tune(p: Pipeline, before: RecData, options: UpdateOptions) -> dict[str, Any]:
    """Imitation from the served policy on fresh and replayed logged choices, validated from
    the start; the figures, and the best policy's state under `best_state`."""
    fresh = fresh_choices(p.data, before)
    fresh_at, old_at = np.flatnonzero(fresh), np.flatnonzero(~fresh)
    steps = (
        options.steps
        if options.steps is not None
        else default_steps(p, len(fresh_at), options.replay)
    )
    if not len(fresh_at):
        steps = 0  # nothing new to imitate: the version serves its parent's policy
    check = validation(p)
    validating = 0.0

    def validate() -> float:
        nonlocal validating
        started = time.perf_counter()
        score = check()
        validating += time.perf_counter() - started
        return score

    best, best_step = validate(), 0
    figures: dict[str, Any] = {"valid_ndcg10_before": best, "fresh_choices": len(fresh_at)}
    best_state = copy.deepcopy(p.agent.state_dict())
    if steps:
        started = time.perf_counter()
        # Precomputing every logged position pays only when the steps draw about as many.
        draws = steps * p.trainer.batch_size
        cache_mb = p.trainer.imitation_cache_mb if draws >= len(fresh) else 0
        source = logged_source(p.env, p.data.train_histories, cache_mb)
        figures["seconds_logged_source"] = time.perf_counter() - started
        optimizer = imitation_optimizer(p.agent, options.lr or p.trainer.imitation_lr)
        rng = np.random.default_rng([int(p.cfg.seed), UPDATE_STREAM])
        batch = p.trainer.batch_size
        n_old = round(batch * options.replay) if len(old_at) else 0
        every = max(1, steps // VALIDATIONS)
        bar = progress_bar(range(steps), desc="update", disable=not p.trainer.show_progress)
        for step in bar:
            drawn = np.concatenate([rng.choice(fresh_at, batch - n_old), rng.choice(old_at, n_old)])
            choices = source.choices(drawn, rng)
            if len(choices.actions):
                loss, _ = imitation_loss(p.agent, choices)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if (step + 1) % every == 0 or step + 1 == steps:
                score = validate()
                log.info("update step %d/%d: valid NDCG@10 %.4f", step + 1, steps, score)
                if score > best:
                    best, best_step = score, step + 1
                    best_state = copy.deepcopy(p.agent.state_dict())
    return {
        **figures,
        "steps": steps,
        "replay": options.replay,
        "lr": options.lr or p.trainer.imitation_lr,
        "valid_ndcg10_after": best,
        "best_step": best_step,
        "seconds_validating": validating,
        "best_state": best_state,
    }
