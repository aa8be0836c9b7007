"""`movielens`: a GroupLens MovieLens release, read from its own files.

The layout is recognised from the files in `path` (or in the downloaded release):

- ML-100K: `u.data` (tab-separated user, item, rating, time), `u.item` (latin-1, `|`-separated:
  id, title, release date, video date, IMDb URL, one flag per genre) and `u.genre`.
- ML-1M (and ML-10M): `ratings.dat`, `movies.dat` (latin-1, `::`-separated), optional `tags.dat`.
- The CSV family (ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m): `ratings.csv`,
  `movies.csv`, optional `tags.csv` whose tags are joined per movie, most applied first.

Each rating is one interaction with the rating as its value. Users and movies get dense ids in
the order of their raw ids (only movies someone rated are kept), each user's interactions are
sorted by time with file order kept among equal times, and the split is chronological
leave-one-out unless `split` picks the temporal or the random one.
`item_attributes` holds `raw_id` (the movie id), `year` (-1 when unknown) and `genres`, a multi-hot
matrix whose columns follow `u.genre` for ML-100K and are alphabetical otherwise; the labels
"unknown" and "(no genres listed)" are not genres and are left out.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from marlrec.data import SplitMethod
from marlrec.datasets.files import Kind, Table, check_unique, line_of, read_table
from marlrec.datasets.filters import Filters, RawInteractions, apply_filters, catalog_rows, densify
from marlrec.datasets.splitting import Parsed
from marlrec.datasets.tabular import FileDataset
from marlrec.datasets.text import as_text, render, template_fields
from marlrec.registry import PluginError

WHERE = "dataset 'movielens'"
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{variant}.zip"
# SHA-256 of the official zips as pinned by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/movielens.txt). The ml-latest* releases are refreshed by
# GroupLens from time to time and ml-32m is not pinned there, so those are not verified.
KNOWN_SHA256 = {
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    "ml-20m": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
    "ml-25m": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
}
TEXT_FIELDS = ("title", "year", "genres", "tags")
NO_GENRE_LABELS = frozenset({"unknown", "(no genres listed)"})
# "Toy Story (1995)", "Babylon 5 (1994-1998) ", "Cosmos (1980-)" (hyphen or en dash): the title
# before the parentheses, and the first year.
TITLE_YEAR = r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$"


@dataclass(frozen=True)
class Layout:
    """One MovieLens file layout, recognised by its required files."""

    label: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def sources(self, folder: Path) -> list[Path]:
        names = self.required + tuple(n for n in self.optional if (folder / n).is_file())
        return [folder / n for n in names]


ML100K = Layout("ML-100K", ("u.data", "u.item", "u.genre"))
ML1M = Layout("ML-1M", ("ratings.dat", "movies.dat"), ("tags.dat",))
CSV_FAMILY = Layout("the CSV family", ("ratings.csv", "movies.csv"), ("tags.csv",))
LAYOUTS = (ML100K, ML1M, CSV_FAMILY)


@dataclass(frozen=True, kw_only=True)
class Movies:
    """The item file, in file order."""

    table: Table
    movie_id: pd.Series
    title: pd.Series
    year: pd.Series  # Int64 with missing values
    genres: pd.Series  # "Animation, Children's, Comedy"
    genre_matrix: np.ndarray  # (n_movies, n_genres) uint8
    tags: pd.Series | None = None  # joined tags, indexed by movie id


class MovieLensDataset(FileDataset):
    """MovieLens ratings as implicit interactions, movies described by title, year and genres."""

    @dataclass(kw_only=True)
    class Config:
        path: str = ""
        """Folder of an unzipped MovieLens release (leave empty with download=true)."""
        download: bool = False
        """Fetch `variant` from GroupLens (or `url`) into the cache and read it from there."""
        variant: Literal[
            "ml-100k", "ml-1m", "ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m"
        ] = "ml-100k"
        """The release to download; picks the URL, the checksum and the cache folder."""
        url: str = ""
        """Download from here instead (e.g. a mirror, or a file:// zip); no pinned checksum."""
        sha256: str = ""
        """Expected SHA-256 of the zip; empty uses the pinned value of the official URL, if any."""
        min_user_interactions: int = 0
        """Drop users with fewer interactions (iterated with the item minimum until stable)."""
        min_item_interactions: int = 0
        """Drop movies with fewer interactions (iterated with the user minimum until stable)."""
        rating_threshold: float | None = None
        """Keep only ratings >= this; None keeps every rating as an implicit interaction."""
        text_template: str = "{title} ({year}). Genres: {genres}."
        """Item text from {title}, {year}, {genres} and {tags} (tags: CSV family and tags.dat)."""
        split: SplitMethod = "loo"
        """loo (each user's last item is test, the one before valid), temporal or random."""
        split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
        """Train, valid and test fractions of the temporal and random splits (not loo)."""

    config: Config

    def __init__(self, config: Config) -> None:
        _validate(config)
        super().__init__(config)

    @property
    def filters(self) -> Filters:
        c = self.config
        return Filters(
            min_user_interactions=c.min_user_interactions,
            min_item_interactions=c.min_item_interactions,
            rating_threshold=c.rating_threshold,
        )

    def sources(self, cache_dir: Path) -> list[Path]:
        """The release's files, downloaded first with download=true."""
        folder = download(self.config, cache_dir) if self.config.download else self.folder()
        return detect_layout(folder).sources(folder)

    def folder(self) -> Path:
        folder = Path(self.config.path).expanduser()
        if not folder.is_dir():
            raise PluginError(f"{WHERE}: data.path {str(folder)!r} is not a folder")
        return folder

    def parse(self, sources: list[Path]) -> Parsed:
        folder = sources[0].parent
        raw, movies = READERS[detect_layout(folder).label](folder)
        check_unique(movies.table, movies.movie_id, "movie id")
        catalog = catalog_rows(raw, movies.movie_id, movies.table, "movie id")
        raw = apply_filters(raw, self.filters)
        interactions, user_ids, item_ids = densify(raw)
        rows = catalog.get_indexer(item_ids)
        return Parsed(
            name=self.name,
            interactions=interactions,
            n_users=len(user_ids),
            user_ids=user_ids,
            item_text=_describe(movies, rows, item_ids, self.config.text_template),
            item_attributes={
                "raw_id": item_ids.astype(np.int64),
                "year": movies.year.iloc[rows].fillna(-1).to_numpy(dtype=np.int64),
                "genres": movies.genre_matrix[rows],
            },
            source=raw.table,
        )


def _validate(c: MovieLensDataset.Config) -> None:
    if c.download and c.path:
        raise PluginError(
            f"{WHERE}: set data.path to an unzipped release or data.download=true, not both"
        )
    if not (c.download or c.path):
        raise PluginError(
            f"{WHERE}: set data.path=<folder of an unzipped MovieLens release> "
            "or data.download=true"
        )
    if c.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", c.sha256):
        raise PluginError(f"{WHERE}: sha256 must be 64 hexadecimal digits, got {c.sha256!r}")
    Filters(
        min_user_interactions=c.min_user_interactions,
        min_item_interactions=c.min_item_interactions,
    ).validate(WHERE)
    template_fields(c.text_template, TEXT_FIELDS, WHERE)


def detect_layout(folder: Path) -> Layout:
    """The layout whose files `folder` holds; a half-present layout names what is missing."""
    if not folder.is_dir():
        raise PluginError(f"{WHERE}: {folder} is not a folder")
    for layout in LAYOUTS:
        present = [n for n in layout.required if (folder / n).is_file()]
        if len(present) == len(layout.required):
            return layout
        if present:
            missing = [n for n in layout.required if n not in present]
            raise PluginError(
                f"{WHERE}: {folder / missing[0]} is missing ({layout.label} layout needs "
                f"{', '.join(layout.required)})"
            )
    expected = "; ".join(f"{lay.label} needs {', '.join(lay.required)}" for lay in LAYOUTS)
    raise PluginError(f"{WHERE}: {folder} holds no MovieLens release ({expected})")


# --- readers, one per layout ---------------------------------------------------------------

RATING_NAMES = ("user", "item", "rating", "time")
RATING_KINDS: dict[str, Kind] = {"user": "int", "item": "int", "rating": "float", "time": "int"}


def _read_100k(folder: Path) -> tuple[RawInteractions, Movies]:
    genre_names = _read_genre_list(folder / "u.genre")
    names = ("movie_id", "title", "release_date", "video_date", "url", *genre_names)
    item_table = Table(
        path=folder / "u.item",
        where=WHERE,
        sep="|",
        names=names,
        columns={
            "movie_id": "int",
            "title": "str",
            "release_date": "str",
            **{g: "int" for g in genre_names},
        },
        nullable=frozenset({"release_date"}),
        encoding="latin-1",
        quoted=False,
    )
    items = read_table(item_table)
    title, title_year = _split_title(items["title"])
    release_year = pd.to_numeric(
        items["release_date"].str.extract(r"(\d{4})\s*$")[0], errors="coerce"
    ).astype("Int64")
    kept = [g for g in genre_names if g not in NO_GENRE_LABELS]
    flags = items[kept].to_numpy() != 0
    genre_text = [", ".join(np.asarray(kept)[row].tolist()) for row in flags]
    movies = Movies(
        table=item_table,
        movie_id=items["movie_id"],
        title=title,
        year=release_year.fillna(title_year),
        genres=pd.Series(genre_text, dtype=object),
        genre_matrix=flags.astype(np.uint8),
    )
    ratings = _ratings(
        Table(
            path=folder / "u.data",
            where=WHERE,
            sep="\t",
            names=RATING_NAMES,
            columns=RATING_KINDS,
            quoted=False,
        )
    )
    return ratings, movies


def _read_genre_list(path: Path) -> list[str]:
    """u.genre: "name|index" per line, indices 0, 1, 2, ... in order."""
    table = Table(
        path=path,
        where=WHERE,
        sep="|",
        names=("genre", "index"),
        columns={"genre": "str", "index": "int"},
        encoding="latin-1",
        quoted=False,
    )
    genres = read_table(table)
    wrong = genres["index"].to_numpy() != np.arange(len(genres))
    if wrong.any():
        row = int(wrong.argmax())
        raise table.error(
            f"genre index {int(genres['index'].iloc[row])} where {row} was expected",
            line_of(table, row),
        )
    return genres["genre"].str.strip().tolist()


def _read_dat(folder: Path) -> tuple[RawInteractions, Movies]:
    item_table = Table(
        path=folder / "movies.dat",
        where=WHERE,
        sep="::",
        names=("movie_id", "title", "genres"),
        columns={"movie_id": "int", "title": "str", "genres": "str"},
        nullable=frozenset({"genres"}),
        encoding="latin-1",
        quoted=False,
    )
    tags = None
    if (folder / "tags.dat").is_file():
        tags = _joined_tags(
            Table(
                path=folder / "tags.dat",
                where=WHERE,
                sep="::",
                names=("user", "movie_id", "tag", "time"),
                columns={"movie_id": "int", "tag": "str"},
                nullable=frozenset({"tag"}),
                encoding="latin-1",
                quoted=False,
            )
        )
    ratings = _ratings(
        Table(
            path=folder / "ratings.dat",
            where=WHERE,
            sep="::",
            names=RATING_NAMES,
            columns=RATING_KINDS,
            quoted=False,
        )
    )
    return ratings, _piped_movies(item_table, tags)


def _read_csv_family(folder: Path) -> tuple[RawInteractions, Movies]:
    item_table = Table(
        path=folder / "movies.csv",
        where=WHERE,
        sep=",",
        columns={"movieId": "int", "title": "str", "genres": "str"},
        nullable=frozenset({"genres"}),
    )
    tags = None
    if (folder / "tags.csv").is_file():
        tags = _joined_tags(
            Table(
                path=folder / "tags.csv",
                where=WHERE,
                sep=",",
                columns={"movieId": "int", "tag": "str"},
                nullable=frozenset({"tag"}),
            )
        )
    ratings = _ratings(
        Table(
            path=folder / "ratings.csv",
            where=WHERE,
            sep=",",
            columns={"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"},
        )
    )
    return ratings, _piped_movies(item_table, tags)


def _ratings(table: Table) -> RawInteractions:
    frame = read_table(table)
    user, item, rating, time = (frame[c].to_numpy() for c in table.columns)
    return RawInteractions(
        table=table,
        user=user,
        item=item,
        time=time.astype(np.float64),
        value=rating.astype(np.float32),
    )


def _piped_movies(table: Table, tags: pd.Series | None) -> Movies:
    """movies.dat / movies.csv: id, "Title (year)", "Genre|Genre"."""
    frame = read_table(table)
    movie_id, titles, genres = (frame[c] for c in table.columns)
    genres = genres.fillna("").astype(str)
    title, year = _split_title(titles)
    matrix = genres.str.get_dummies(sep="|")
    matrix = matrix.drop(columns=[g for g in matrix.columns if g in NO_GENRE_LABELS])
    genre_text = genres.map(
        lambda s: ", ".join(g for g in s.split("|") if g and g not in NO_GENRE_LABELS)
    )
    return Movies(
        table=table,
        movie_id=movie_id,
        title=title,
        year=year,
        genres=genre_text,
        genre_matrix=matrix.to_numpy(dtype=np.uint8),
        tags=tags,
    )


def _split_title(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Split "Toy Story (1995)" into ("Toy Story", 1995); a title without a year stays whole."""
    titles = titles.fillna("").astype(str).str.strip()
    parts = titles.str.extract(TITLE_YEAR)
    title = parts["title"].fillna(titles)
    year = pd.to_numeric(parts["year"], errors="coerce").astype("Int64")
    return title, year


def _joined_tags(table: Table) -> pd.Series:
    """Each movie's distinct tags (case-insensitive), most applied first, joined by ", "."""
    frame = read_table(table)
    movie_col, tag_col = table.columns
    tag = frame[tag_col].fillna("").astype(str).str.strip()
    keep = (tag != "").to_numpy()
    tags = pd.DataFrame(
        {
            "movie": frame[movie_col].to_numpy()[keep],
            "key": tag[keep].str.lower().to_numpy(),
            "tag": tag[keep].to_numpy(),
            "order": np.flatnonzero(keep),
        }
    )
    counted = (
        tags.groupby(["movie", "key"], sort=False)
        .agg(tag=("tag", "first"), n=("tag", "size"), first=("order", "min"))
        .reset_index()
        .sort_values(["movie", "n", "first"], ascending=[True, False, True], kind="stable")
    )
    movies = counted["movie"].to_numpy()
    ordered = counted["tag"].tolist()
    starts = np.flatnonzero(np.r_[True, movies[1:] != movies[:-1]]) if len(movies) else movies
    bounds = [*starts.tolist(), len(ordered)]
    # One join per movie over the sorted list: far faster than a groupby with a Python aggregate.
    joined = [", ".join(ordered[a:b]) for a, b in itertools.pairwise(bounds)]
    return pd.Series(joined, index=movies[starts], dtype=object)


READERS = {
    ML100K.label: _read_100k,
    ML1M.label: _read_dat,
    CSV_FAMILY.label: _read_csv_family,
}


def _describe(movies: Movies, rows: np.ndarray, item_ids: np.ndarray, template: str) -> list[str]:
    """One text per dense item, filled from its movie's row."""
    year = movies.year.iloc[rows]
    tags = [""] * len(rows)
    if movies.tags is not None:
        tags = as_text(movies.tags.reindex(item_ids))
    columns = {
        "title": as_text(movies.title.iloc[rows]),
        "year": [str(y) if not pd.isna(y) else "" for y in year],
        "genres": as_text(movies.genres.iloc[rows]),
        "tags": tags,
    }
    return render(template, columns, len(rows))


# --- download ------------------------------------------------------------------------------


def download(config: MovieLensDataset.Config, cache_dir: Path) -> Path:
    """The unzipped release in `cache_dir/datasets/<variant>`, fetched and verified once."""
    root = Path(cache_dir).expanduser() / "datasets"
    target = root / config.variant
    if target.is_dir():
        return target
    url = config.url or GROUPLENS_URL.format(variant=config.variant)
    # A pinned checksum describes the official zip only; an overriding url may serve any zip.
    expected = config.sha256 or ("" if config.url else KNOWN_SHA256.get(config.variant, ""))
    root.mkdir(parents=True, exist_ok=True)
    zip_name = Path(urllib.parse.urlparse(url).path).name or f"{config.variant}.zip"
    # Everything happens in a temporary folder beside the target, renamed into place at the end,
    # so an interrupted download or extraction never leaves a half-filled release behind.
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{config.variant}.") as tmp:
        archive = Path(tmp) / zip_name
        digest = _fetch(url, archive)
        if expected and digest != expected.lower():
            raise PluginError(
                f"{WHERE}: {zip_name} from {url} has sha256 {digest}, expected {expected.lower()}"
            )
        release = _extract(archive, Path(tmp) / "extracted", url)
        try:
            os.rename(release, target)
        except OSError:
            if not target.is_dir():  # else another process finished the same download first
                raise
    return target


def _fetch(url: str, dest: Path) -> str:
    """Stream `url` into `dest`; return its SHA-256."""
    sha = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            while chunk := response.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PluginError(f"{WHERE}: could not download {url}: {reason}") from None
    return sha.hexdigest()


def _extract(archive: Path, into: Path, url: str) -> Path:
    """Unzip; the release is the zip's single top folder (ml-100k/...), else the zip's root."""
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)  # zipfile drops absolute paths and ".." from member names
    except zipfile.BadZipFile:
        raise PluginError(f"{WHERE}: {archive.name} from {url} is not a zip archive") from None
    entries = [p for p in into.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return into
