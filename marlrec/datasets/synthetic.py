"""`synthetic`: a generated catalog with readable item descriptions and known user tastes.

Every item has a main and a secondary topic, a mood and a format; its description is written
from the topics' own vocabularies, so a sentence encoder places items of the same topics near
each other. Users have Dirichlet tastes over topics and a mood preference, and consume items
one after another with probability proportional to `exp(affinity)`, where `affinity` is exactly
`GroundTruth.affinity`, plus a short-term pull toward the topics of the previous item.

Scale of the ground truth: `affinity(u, i) = user_taste[u] . item_profile[i] + item_quality[i]`
is the log-odds (up to a per-user constant) with which the logging policy picked item i for
user u. Typical values lie in about [-2, sharpness]: a topic match adds up to `sharpness`, a
preferred mood up to `mood_strength`, and quality is Normal(0, popularity_strength).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from marlrec.data import GroundTruth, Interactions, RecData, SplitMethod, split_interactions
from marlrec.datasets import Dataset, validate_split
from marlrec.registry import PluginError


@dataclass(frozen=True)
class Topic:
    label: str  # adjective in "a tense {label} film"
    touch: str  # noun in "with a touch of {touch}"
    subjects: tuple[str, ...]
    title_words: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "science-fiction",
        "science fiction",
        (
            "starships",
            "lost colonies",
            "distant planets",
            "rogue androids",
            "time travel",
            "alien signals",
            "orbital space stations",
            "quantum experiments",
        ),
        ("Orbit", "Nebula", "Starfall", "Android", "Eclipse", "Colony", "Quasar", "Galaxy"),
    ),
    Topic(
        "romantic",
        "romance",
        (
            "first love",
            "a summer wedding",
            "love letters",
            "a chance meeting",
            "old flames",
            "a seaside romance",
            "secret admirers",
            "a broken engagement",
        ),
        ("Hearts", "Kiss", "Promise", "Valentine", "Bouquet", "Honeymoon", "Sweetheart", "Embrace"),
    ),
    Topic(
        "crime",
        "crime",
        (
            "a daring heist",
            "corrupt detectives",
            "a cold murder case",
            "mob bosses",
            "a stolen diamond",
            "an undercover cop",
            "a courtroom trial",
            "a getaway driver",
        ),
        ("Heist", "Alibi", "Verdict", "Ransom", "Syndicate", "Witness", "Getaway", "Precinct"),
    ),
    Topic(
        "comedy",
        "comedy",
        (
            "clumsy roommates",
            "a disastrous road trip",
            "office pranks",
            "a chaotic family reunion",
            "mistaken identities",
            "stand-up comedians",
            "a wedding gone hilariously wrong",
            "eccentric neighbours",
        ),
        ("Mayhem", "Blunder", "Pranksters", "Shenanigans", "Giggles", "Hijinks", "Goofs", "Jokers"),
    ),
    Topic(
        "historical",
        "history",
        (
            "ancient empires",
            "medieval kings",
            "the industrial revolution",
            "forgotten battles",
            "royal dynasties",
            "a Roman legion",
            "the age of exploration",
            "revolutionary leaders",
        ),
        ("Empire", "Dynasty", "Crown", "Legion", "Chronicle", "Throne", "Pharaoh", "Conquest"),
    ),
    Topic(
        "nature",
        "wildlife",
        (
            "rainforest wildlife",
            "migrating whales",
            "arctic wolves",
            "coral reefs",
            "mountain glaciers",
            "endangered species",
            "desert ecosystems",
            "wild rivers",
        ),
        ("Wilderness", "Savanna", "Reef", "Glacier", "Canopy", "Tundra", "Migration", "Habitat"),
    ),
    Topic(
        "sports",
        "sport",
        (
            "an underdog football team",
            "olympic sprinters",
            "a boxing champion",
            "a legendary coach",
            "a basketball final",
            "marathon runners",
            "a tennis rivalry",
            "a cycling race",
        ),
        ("Champion", "Victory", "Playoff", "Knockout", "Stadium", "Finals", "Rookie", "Rally"),
    ),
    Topic(
        "animated",
        "animation",
        (
            "talking animals",
            "a cartoon kingdom",
            "enchanted toys",
            "a brave little robot",
            "magical creatures",
            "a friendly dragon",
            "a fairy-tale forest",
            "colourful cartoon critters",
        ),
        ("Toontown", "Doodle", "Sprite", "Whiskers", "Pixel", "Critters", "Bubbles", "Fable"),
    ),
    Topic(
        "horror",
        "horror",
        (
            "a haunted house",
            "restless ghosts",
            "a cursed doll",
            "a masked killer",
            "demonic possession",
            "flesh-eating zombies",
            "an abandoned asylum",
            "bloodthirsty vampires",
        ),
        ("Haunting", "Curse", "Phantom", "Nightmare", "Dread", "Crypt", "Possession", "Graveyard"),
    ),
    Topic(
        "musical",
        "music",
        (
            "a rock band on tour",
            "jazz legends",
            "an opera singer",
            "a hip-hop producer",
            "a symphony orchestra",
            "a songwriting duo",
            "a music festival",
            "a piano prodigy",
        ),
        ("Rhythm", "Melody", "Encore", "Symphony", "Ballad", "Groove", "Harmony", "Chorus"),
    ),
    Topic(
        "culinary",
        "cooking",
        (
            "a master chef",
            "street food",
            "a family bakery",
            "a cooking competition",
            "regional recipes",
            "a starred restaurant kitchen",
            "farmers markets",
            "spicy cuisine",
        ),
        ("Kitchen", "Recipe", "Feast", "Flavor", "Spice", "Banquet", "Pastry", "Simmer"),
    ),
    Topic(
        "travel",
        "adventure travel",
        (
            "backpackers crossing continents",
            "a round-the-world voyage",
            "remote islands",
            "mountain treks",
            "long train journeys",
            "desert caravans",
            "lost temples",
            "faraway villages",
        ),
        (
            "Voyage",
            "Passport",
            "Journey",
            "Expedition",
            "Compass",
            "Odyssey",
            "Wanderlust",
            "Trail",
        ),
    ),
)

MOODS = ("tense", "heartwarming", "lighthearted", "dark", "thoughtful", "uplifting")
FORMATS = ("film", "series", "documentary", "miniseries", "short film")
TITLE_PREFIXES = (
    "Midnight",
    "Last",
    "Silent",
    "Golden",
    "Hidden",
    "Endless",
    "Distant",
    "Broken",
    "Secret",
    "Crimson",
    "Little",
    "Wild",
)


class SyntheticDataset(Dataset):
    """Generated users, items with descriptions, and interactions that follow latent tastes."""

    @dataclass(kw_only=True)
    class Config:
        n_users: int = 600
        """Number of users."""
        n_items: int = 1000
        """Number of catalog items."""
        n_topics: int = 8
        """Latent topics in use, 2 to 12 (the first n of a fixed list)."""
        min_interactions: int = 8
        """Fewest interactions per user (uniform between min and max)."""
        max_interactions: int = 40
        """Most interactions per user."""
        taste_concentration: float = 0.3
        """Dirichlet alpha of user tastes over topics: small means focused on few topics."""
        sharpness: float = 8.0
        """Logit gained for a full match between a user's taste and an item's topics."""
        mood_strength: float = 1.0
        """Logit gained for an item in the user's preferred mood."""
        secondary_weight: float = 0.3
        """Share of an item's topic profile given to its secondary topic (0 to 0.5)."""
        popularity_strength: float = 0.7
        """Spread (std) of item quality, the log-popularity propensity shared by all users."""
        momentum: float = 1.0
        """Short-term logit bonus for items sharing the previous item's topics (0 disables)."""
        split: SplitMethod = "loo"
        """loo (each user's last item is test, the one before valid), temporal or random."""
        split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
        """Train, valid and test fractions of the temporal and random splits (not loo)."""

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        _validate(config, self.where)

    def load(self, *, seed: int, cache_dir: Path) -> RecData:
        """Generate the dataset; it is fast and fully determined by `seed`, so nothing is cached."""
        c = self.config
        rng = np.random.default_rng(seed)
        catalog = _make_catalog(c, rng)
        truth = _make_truth(c, catalog, rng)
        interactions = _make_interactions(c, truth, catalog["topic_profile"], rng)
        return RecData(
            name=self.name,
            n_users=c.n_users,
            n_items=c.n_items,
            interactions=interactions,
            item_text=_describe(catalog, rng),
            # The split's shuffle draws from its own stream, apart from the generation's.
            split=split_interactions(
                interactions,
                c.n_users,
                method=c.split,
                ratios=c.split_ratios,
                seed=[seed, 1],
            ),
            item_attributes={k: catalog[k] for k in ("topic", "secondary_topic", "mood", "format")},
            truth=truth,
        )


def _validate(c: SyntheticDataset.Config, where: str) -> None:
    if not 2 <= c.n_topics <= len(TOPICS):
        raise PluginError(
            f"{where}: n_topics must be between 2 and {len(TOPICS)}, got {c.n_topics}"
        )
    if c.n_users < 1 or c.n_items < 1:
        raise PluginError(f"{where}: n_users and n_items must be positive")
    if not 1 <= c.min_interactions <= c.max_interactions <= c.n_items:
        raise PluginError(
            f"{where}: need 1 <= min_interactions <= max_interactions <= n_items, got "
            f"{c.min_interactions}, {c.max_interactions}, {c.n_items}"
        )
    if c.taste_concentration <= 0:
        raise PluginError(f"{where}: taste_concentration must be positive")
    if not 0 <= c.secondary_weight <= 0.5:
        raise PluginError(f"{where}: secondary_weight must be between 0 and 0.5")
    validate_split(c, where)


def _make_catalog(c: SyntheticDataset.Config, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Latent item attributes, and each item's topic mixture (n_items, n_topics)."""
    n = c.n_items
    topic = rng.integers(c.n_topics, size=n)
    # Secondary topic: any other topic, uniformly.
    secondary = (topic + rng.integers(1, c.n_topics, size=n)) % c.n_topics
    profile = np.zeros((n, c.n_topics), dtype=np.float64)
    rows = np.arange(n)
    profile[rows, topic] = 1.0 - c.secondary_weight
    profile[rows, secondary] += c.secondary_weight
    return {
        "topic": topic,
        "secondary_topic": secondary,
        "mood": rng.integers(len(MOODS), size=n),
        "format": rng.integers(len(FORMATS), size=n),
        "topic_profile": profile,
    }


def _make_truth(
    c: SyntheticDataset.Config, catalog: dict[str, np.ndarray], rng: np.random.Generator
) -> GroundTruth:
    """Tastes and profiles scaled so that their dot product plus quality is a choice logit."""
    topic_taste = rng.dirichlet(np.full(c.n_topics, c.taste_concentration), size=c.n_users)
    mood_taste = rng.dirichlet(np.ones(len(MOODS)), size=c.n_users)
    # Rescale the mood preference to [0, 1] per user so the favourite mood gains `mood_strength`.
    mood_taste = mood_taste / mood_taste.max(axis=1, keepdims=True)
    user_taste = np.hstack([c.sharpness * topic_taste, c.mood_strength * mood_taste])
    mood_onehot = np.eye(len(MOODS))[catalog["mood"]]
    item_profile = np.hstack([catalog["topic_profile"], mood_onehot])
    quality = c.popularity_strength * rng.standard_normal(c.n_items)
    return GroundTruth(
        user_taste=user_taste.astype(np.float32),
        item_profile=item_profile.astype(np.float32),
        item_quality=quality.astype(np.float32),
    )


def _make_interactions(
    c: SyntheticDataset.Config,
    truth: GroundTruth,
    topic_profile: np.ndarray,
    rng: np.random.Generator,
) -> Interactions:
    """Each user consumes distinct items one by one, sampled from softmax(affinity + momentum)."""
    counts = rng.integers(c.min_interactions, c.max_interactions + 1, size=c.n_users)
    logits = truth.user_taste.astype(np.float64) @ truth.item_profile.T.astype(np.float64)
    logits += truth.item_quality
    # Choice weights exp(logit); the row max is subtracted only to keep exp in range.
    weight = np.exp(logits - logits.max(axis=1, keepdims=True))
    unit = topic_profile / np.linalg.norm(topic_profile, axis=1, keepdims=True)
    boost = np.exp(c.momentum * (unit @ unit.T))  # cosine of topic mixtures, in [0, 1]
    chosen = np.zeros((c.n_users, c.max_interactions), dtype=np.int64)
    for step in range(c.max_interactions):
        users = np.flatnonzero(counts > step)
        w = weight[users]
        if step > 0:
            w = w * boost[chosen[users, step - 1]]
        # Inverse-CDF draw; the target lies in (0, total], so a zero weight is never picked.
        cdf = np.cumsum(w, axis=1)
        target = (1.0 - rng.random(len(users))) * cdf[:, -1]
        pick = (cdf < target[:, None]).sum(axis=1)
        chosen[users, step] = pick
        weight[users, pick] = 0.0  # without replacement
    user = np.repeat(np.arange(c.n_users), counts)
    step_mask = np.arange(c.max_interactions) < counts[:, None]
    # Gaps of one minute plus an exponential wait keep each user's times strictly increasing.
    gaps = 60.0 + rng.exponential(6 * 3600.0, size=chosen.shape)
    start = rng.uniform(0.0, 30 * 86400.0, size=(c.n_users, 1))
    time = start + np.cumsum(gaps, axis=1)
    return Interactions(
        user=user.astype(np.int64),
        item=chosen[step_mask],
        time=time[step_mask].astype(np.float64),
        value=np.ones(len(user), dtype=np.float32),
    )


def _describe(catalog: dict[str, np.ndarray], rng: np.random.Generator) -> list[str]:
    """Write one description per item from its topics' vocabularies, mood and format."""
    n = len(catalog["topic"])
    n_subjects = len(TOPICS[0].subjects)
    # Two distinct main-topic subjects and one secondary-topic subject per item.
    first = rng.integers(n_subjects, size=n)
    second = (first + rng.integers(1, n_subjects, size=n)) % n_subjects
    extra = rng.integers(n_subjects, size=n)
    prefix = rng.integers(len(TITLE_PREFIXES), size=n)
    word = rng.integers(len(TOPICS[0].title_words), size=n)
    texts = []
    for i in range(n):
        main, side = TOPICS[catalog["topic"][i]], TOPICS[catalog["secondary_topic"][i]]
        mood = MOODS[catalog["mood"][i]]
        title = f"{TITLE_PREFIXES[prefix[i]]} {main.title_words[word[i]]}"
        texts.append(
            f"{title} — {_article(mood)} {mood} {main.label} {FORMATS[catalog['format'][i]]} "
            f"about {main.subjects[first[i]]} and {main.subjects[second[i]]}, "
            f"with a touch of {side.touch} and {side.subjects[extra[i]]}."
        )
    return texts


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
