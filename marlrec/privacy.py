"""Privacy settings: pseudonymised user ids and differentially private training.

Pseudonyms are HMAC-SHA256 digests of the dataset's user ids under a secret key, taken from
`$MARLREC_PRIVACY_KEY` or, failing that, from `privacy.key_file` (which `marlrec train`
creates, readable by its owner alone, when it is missing). Users are then re-indexed in the
order of their pseudonyms, so that neither a pseudonym nor a user's index tells anything of
the raw id, and the raw ids are dropped before any plugin sees the data: nothing a run writes
can carry them. Mapping an outside id to its user again takes the same key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marlrec.data import Interactions, RecData, Split
from marlrec.plugin import COMPOSED_DEFAULT
from marlrec.registry import MarlrecError, PluginError, build_config

KEY_ENV = "MARLREC_PRIVACY_KEY"
DEFAULT_KEY_FILE = "~/.config/marlrec/privacy.key"
KEY_BYTES = 32


@dataclass(kw_only=True)
class DPConfig:
    """The `privacy.dp` settings: DP-SGD (Opacus) for the networks that learn from users."""

    enabled: bool = False
    """Train the agents' scoring networks by DP-SGD on the logged choices (imitation only:
    reinforcement learning replays users' sessions outside DP-SGD and is refused with it)."""
    epsilon: float = 8.0
    """Target ε of (ε, δ)-differential privacy per user over the whole imitation phase; the
    noise is calibrated to reach it and the ε actually spent goes to metrics.json."""
    delta: float = 1e-5
    """Target δ; keep it well below 1 / the number of users."""
    max_grad_norm: float = 1.0
    """Each user's gradient is clipped to this L2 norm before the noise is added."""

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise PluginError(f"privacy.dp.epsilon must be positive, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise PluginError(f"privacy.dp.delta must be between 0 and 1, got {self.delta}")
        if not self.max_grad_norm > 0:
            raise PluginError(
                f"privacy.dp.max_grad_norm must be positive, got {self.max_grad_norm}"
            )


@dataclass(kw_only=True)
class PrivacyConfig:
    """The `privacy` config group: pseudonymised ids and differential privacy."""

    pseudonymise: bool = False
    """Replace user ids by HMAC-SHA256 pseudonyms under a secret key (see key_file) and index
    users by their first interaction's time, so that no output of the run carries a raw user
    id; serving a user by their outside id then needs the same key. On in the presets that
    read real data."""
    key_file: str = DEFAULT_KEY_FILE
    """File holding the secret key when $MARLREC_PRIVACY_KEY is not set; `marlrec train`
    creates it (mode 600, a random key) when missing. Never inside a run dir."""
    dp: DPConfig = field(
        default_factory=DPConfig,
        metadata={COMPOSED_DEFAULT: dataclasses.asdict(DPConfig())},
    )
    """Differentially private training (privacy.dp.enabled, .epsilon, .delta, .max_grad_norm)."""


def build_privacy_config(section: dict[str, Any], source: str = "") -> PrivacyConfig:
    """The `privacy` section as a PrivacyConfig, each bad key named in one line."""
    section = dict(section)
    dp = section.pop("dp", None) or {}
    if not isinstance(dp, dict):
        raise PluginError(f"privacy.dp must be a mapping of DP settings, got {dp!r}")
    plain = build_config("privacy", None, _Flat, section, source)
    return PrivacyConfig(
        pseudonymise=plain.pseudonymise,
        key_file=plain.key_file,
        dp=build_config("privacy.dp", None, DPConfig, dp, source),
    )


@dataclass(kw_only=True)
class _Flat:
    """PrivacyConfig's own keys, checked apart from the nested `dp` section."""

    pseudonymise: bool = False
    key_file: str = DEFAULT_KEY_FILE


# --- the key ---------------------------------------------------------------------------------


def load_key(config: PrivacyConfig, create: bool = False) -> bytes:
    """The secret key: `$MARLREC_PRIVACY_KEY`, else the key file (made when `create`)."""
    from_env = os.environ.get(KEY_ENV)
    if from_env is not None:
        if not from_env.strip():
            raise MarlrecError(f"${KEY_ENV} is set but empty")
        return from_env.strip().encode()
    path = Path(config.key_file).expanduser()
    if not path.is_file():
        if not create:
            raise MarlrecError(
                f"this run's user ids are pseudonymised and no key was found: set ${KEY_ENV} "
                f"or privacy.key_file (tried {path})"
            )
        return _create_key(path)
    try:
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MarlrecError(f"privacy.key_file {path} cannot be read: {exc}") from None
    if not key:
        raise MarlrecError(f"privacy.key_file {path} is empty")
    return key.encode()


def _create_key(path: Path) -> bytes:
    """A new random key, written with mode 600; never over an existing file."""
    key = secrets.token_hex(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another run made it meanwhile: use theirs
        return load_key(PrivacyConfig(key_file=str(path)))
    except OSError as exc:
        raise MarlrecError(f"privacy.key_file {path} cannot be created: {exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    return key.encode()


def check_key_outside(config: PrivacyConfig, run_dir: Path) -> None:
    """A key file inside the run dir would ship the secret with the outputs: refused."""
    if os.environ.get(KEY_ENV) is not None:
        return
    key = Path(config.key_file).expanduser().resolve()
    if key.is_relative_to(run_dir.resolve()):
        raise MarlrecError(
            f"privacy.key_file {key} is inside the run dir {run_dir}: keep the key elsewhere"
        )


# --- pseudonyms ------------------------------------------------------------------------------


def pseudonym(key: bytes, user_id: object) -> str:
    """The HMAC-SHA256 pseudonym (64 hex digits) of one raw user id, as its text."""
    return hmac.new(key, str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymise(data: RecData, key: bytes) -> RecData:
    """`data` with pseudonyms for user ids and users re-indexed by their first interaction's
    time, ties by pseudonym: an index says nothing about the raw id, and a run's figures do not
    depend on the key (only users who start at the same instant can swap places).

    A dataset without raw ids (the generated one) has its dense indices pseudonymised.
    """
    raw = data.user_ids if data.user_ids is not None else np.arange(data.n_users)
    names = np.array([pseudonym(key, u) for u in raw.tolist()])
    first = np.full(data.n_users, np.inf)
    np.minimum.at(first, data.interactions.user, data.interactions.time.astype(np.float64))
    order = np.lexsort((names, first))  # new index -> old
    new_of_old = np.empty(data.n_users, dtype=np.int64)
    new_of_old[order] = np.arange(data.n_users)
    split = data.split
    truth = data.truth
    if truth is not None:
        truth = dataclasses.replace(truth, user_taste=truth.user_taste[order])
    return dataclasses.replace(
        data,
        interactions=_relabel(data.interactions, new_of_old),
        split=Split(
            train=_relabel(split.train, new_of_old),
            valid_item=split.valid_item[order],
            test_item=split.test_item[order],
            valid=None if split.valid is None else _relabel(split.valid, new_of_old),
            test=None if split.test is None else _relabel(split.test, new_of_old),
        ),
        truth=truth,
        user_ids=names[order],
    )


def _relabel(part: Interactions, new_of_old: np.ndarray) -> Interactions:
    """Interactions with new user indices, sorted by them (each user's order kept)."""
    user = new_of_old[part.user]
    keep = np.argsort(user, kind="stable")
    return Interactions(
        user=user[keep], item=part.item[keep], time=part.time[keep], value=part.value[keep]
    )


def user_index(data: RecData, key: bytes, user_id: object) -> int:
    """The index of the user whose raw id is `user_id`, through its pseudonym; -1 if none."""
    assert data.user_ids is not None
    return data.user_index_of_id.get(pseudonym(key, user_id), -1)
