"""MovieLens releases: what they are, how to parse each one's own format, how to split and index them.

Pure functions: data in, data out. Nothing here touches the volume, the lake or MLflow.

Every release is normalised to the same two tables:

* ``ratings``: ``user_id`` int64, ``item_id`` int64, ``rating`` float32, ``timestamp`` int64
* ``items``: ``item_id`` int64, ``title`` str, ``genres`` str (``|``-joined genre names)
"""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modelyard.errors import DataError
from modelyard.params import check_split_sizes

RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "genres"]

# Genre flags of ml-100k's u.item, in the order of u.genre.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRES = "(no genres listed)"  # what ml-latest / ml-25m write for a movie without genres

_BASE_URL = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class Release:
    """One MovieLens release as GroupLens publishes it."""

    name: str
    url: str
    sha256: str | None  # SHA-256 of the official zip; None where not known for sure
    rating_min: float
    rating_max: float
    ratings_file: str  # file name of the ratings inside the zip (found in any folder)
    items_file: str  # file name of the movies inside the zip
    format: str  # "csv" (ml-latest-small, ml-25m), "dat" (ml-1m), "100k" (u.data / u.item)

    @property
    def filename(self) -> str:
        return f"{self.name}.zip"


# The SHA-256 values (and sizes in the comments) are those TensorFlow Datasets verified for these URLs
# (tensorflow_datasets/url_checksums/movielens.txt).
RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("ml-latest-small", f"{_BASE_URL}/ml-latest-small.zip",  # 978,202 bytes
                "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
                0.5, 5.0, "ratings.csv", "movies.csv", "csv"),
        Release("ml-100k", f"{_BASE_URL}/ml-100k.zip",  # 4,924,029 bytes
                "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                1.0, 5.0, "u.data", "u.item", "100k"),
        Release("ml-1m", f"{_BASE_URL}/ml-1m.zip",  # 5,917,549 bytes
                "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                1.0, 5.0, "ratings.dat", "movies.dat", "dat"),
        Release("ml-25m", f"{_BASE_URL}/ml-25m.zip",  # 261,978,986 bytes
                "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
                0.5, 5.0, "ratings.csv", "movies.csv", "csv"),
    )
}
DEFAULT_RELEASE = "ml-latest-small"


def get_release(name: str) -> Release:
    try:
        return RELEASES[name]
    except KeyError:
        raise DataError(f"unknown MovieLens release {name!r}; known releases: {', '.join(RELEASES)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------

_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError)
_CHUNK_ROWS = 1_000_000


class _Archive:
    """An open release zip whose members are found by file name and whose errors become DataErrors."""

    def __init__(self, archive: str | Path):
        self.path = str(archive)
        try:
            self.zf = zipfile.ZipFile(archive)
        except FileNotFoundError:
            raise DataError(f"archive {self.path} not found") from None
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{self.path} is not a readable zip archive: {e}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zf.close()

    def member(self, filename: str) -> str:
        matches = [
            n for n in self.zf.namelist()
            if not n.endswith("/") and not n.startswith("__MACOSX/") and n.rsplit("/", 1)[-1] == filename
        ]
        if not matches:
            raise DataError(f"{self.path} has no file {filename} (looked in every folder of the zip)")
        return min(matches, key=lambda n: (n.count("/"), n))  # the shallowest, e.g. ml-100k/u.data

    def open(self, member: str):
        return self.zf.open(member)

    def read(self, member: str) -> bytes:
        try:
            return self.zf.read(member)
        except _ZIP_ERRORS as e:
            raise self.corrupt(member, e) from None

    def corrupt(self, member: str, e: Exception) -> DataError:
        return DataError(f"{self.path}: {member} is corrupt ({e}); delete the archive and download it again")

    def where(self, member: str) -> str:
        return f"{self.path}: {member}"


# pandas' default missing-value markers: a float column parses them to NaN (left to the quality checks).
_NA_STRINGS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
})


def _first_bad_value(frame: pd.DataFrame, numeric: dict[str, str], row_offset: int):
    """(row, column, value) of the first value that failed to parse: in an int column anything but an integer,
    in a float column anything but a number or a missing-value marker."""
    first = None
    for col, kind in numeric.items():
        raw = frame[col]
        parsed = pd.to_numeric(raw, errors="coerce")
        bad = parsed.isna().to_numpy().copy()
        if kind == "int":
            bad |= (parsed.notna() & (parsed != np.floor(parsed.fillna(0)))).to_numpy()
        else:
            bad &= ~raw.str.strip().isin(_NA_STRINGS).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            if first is None or i < first[0]:
                first = (i, col, raw.iloc[i])
    return None if first is None else (row_offset + first[0], first[1], first[2])


def _raise_bad_value(arc: _Archive, member: str, read_strings, numeric: dict[str, str], header: bool, error: Exception):
    """Re-read the member as strings, chunk by chunk, to find and name the value that failed to parse."""
    offset = 0
    try:
        for chunk in read_strings():
            found = _first_bad_value(chunk, numeric, offset)
            if found is not None:
                row, col, value = found
                line = row + 1 + (1 if header else 0)
                what = "is empty" if pd.isna(value) or str(value).strip() == "" else f"has {str(value)!r}, not {'an integer' if numeric[col] == 'int' else 'a number'}"
                raise DataError(f"{arc.where(member)} row {row + 1} (line {line}), column {col!r} {what}")
            offset += len(chunk)
    except _ZIP_ERRORS as e:
        raise arc.corrupt(member, e) from None
    raise DataError(f"{arc.where(member)} could not be parsed: {error}")


def _read_csv_member(arc: _Archive, member: str, dtypes: dict, numeric: dict[str, str], **kwargs) -> pd.DataFrame:
    """Read a headed CSV member with the `dtypes` columns (which must all be there)."""
    try:
        with arc.open(member) as f:
            columns = list(pd.read_csv(f, nrows=0, **kwargs).columns)
    except _ZIP_ERRORS as e:
        raise arc.corrupt(member, e) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{arc.where(member)} could not be parsed: {e}") from None
    for col in dtypes:
        if col not in columns:
            raise DataError(f"{arc.where(member)} has no column {col!r} (columns: {', '.join(map(str, columns))})")
    usecols = list(dtypes)
    try:
        with arc.open(member) as f:
            df = pd.read_csv(f, usecols=usecols, dtype=dtypes, engine="c", **kwargs)
        return df if list(df.columns) == usecols else df[usecols]
    except _ZIP_ERRORS as e:
        raise arc.corrupt(member, e) from None
    except (ValueError, TypeError, OverflowError) as e:  # includes pandas' ParserError
        def read_strings():
            with arc.open(member) as f:
                yield from pd.read_csv(f, usecols=usecols, engine="c", chunksize=_CHUNK_ROWS,
                                       **{**kwargs, "dtype": str, "keep_default_na": False, "na_values": []})
        if isinstance(e, pd.errors.ParserError):
            raise DataError(f"{arc.where(member)} could not be parsed: {e}") from None
        _raise_bad_value(arc, member, read_strings, numeric, True, e)


def _read_headerless(arc: _Archive, member: str, data, sep: str, names: list[str], dtypes: dict,
                     numeric: dict[str, str]) -> pd.DataFrame:
    """Read headerless separated numbers from bytes (`data`), naming the first bad value on failure."""
    kwargs = dict(sep=sep, header=None, names=names, quoting=csv.QUOTE_NONE, engine="c")
    try:
        return pd.read_csv(io.BytesIO(data), dtype=dtypes, **kwargs)
    except pd.errors.ParserError as e:
        raise DataError(f"{arc.where(member)} could not be parsed (expected {len(names)} fields a line): {e}") from None
    except (ValueError, TypeError, OverflowError) as e:
        def read_strings():
            yield from pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, chunksize=_CHUNK_ROWS, **kwargs)
        _raise_bad_value(arc, member, read_strings, numeric, False, e)


_RATING_DTYPES = {"user_id": "int64", "item_id": "int64", "rating": "float32", "timestamp": "int64"}
_RATING_NUMERIC = {"user_id": "int", "item_id": "int", "rating": "float", "timestamp": "int"}


def _finish_ratings(df: pd.DataFrame) -> pd.DataFrame:
    if {c: str(t) for c, t in df.dtypes.items()} != _RATING_DTYPES:
        df = df.astype(_RATING_DTYPES)
    return df


def _finish_items(item_ids, titles, genres) -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": np.asarray(item_ids, dtype="int64"),
        "title": pd.Series(titles, dtype=str),
        "genres": pd.Series(genres, dtype=str),
    })


def _read_csv_release(arc: _Archive, release: Release):
    member = arc.member(release.ratings_file)
    ratings = _read_csv_member(
        arc, member, {"userId": "int64", "movieId": "int64", "rating": "float32", "timestamp": "int64"},
        {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"},
    ).rename(columns={"userId": "user_id", "movieId": "item_id"})
    member = arc.member(release.items_file)
    movies = _read_csv_member(
        arc, member, {"movieId": "int64", "title": str, "genres": str}, {"movieId": "int"},
        keep_default_na=False, na_values=[], encoding="utf-8",
    )
    return _finish_ratings(ratings), _finish_items(movies["movieId"], movies["title"], movies["genres"])


def _parse_id(arc: _Archive, member: str, line_no: int, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{arc.where(member)} row {line_no} (line {line_no}), column 'item_id' has {value!r}, not an integer") from None


def _text_lines(arc: _Archive, member: str) -> list[str]:
    return arc.read(member).decode("latin-1").splitlines()


def _read_dat_release(arc: _Archive, release: Release):
    # ratings.dat: UserID::MovieID::Rating::Timestamp; numbers only, so '::' -> '\t' is safe and lets the C parser run.
    member = arc.member(release.ratings_file)
    data = arc.read(member).replace(b"::", b"\t")
    ratings = _read_headerless(arc, member, data, "\t", RATING_COLUMNS, _RATING_DTYPES, _RATING_NUMERIC)
    # movies.dat: MovieID::Title::Genres (a few thousand lines); split by hand so a title may hold ':' or '::'.
    member = arc.member(release.items_file)
    ids, titles, genres = [], [], []
    for n, line in enumerate(_text_lines(arc, member), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < 3:
            raise DataError(f"{arc.where(member)} row {n} (line {n}) has {len(parts)} '::'-separated fields, expected 3 (MovieID::Title::Genres)")
        ids.append(_parse_id(arc, member, n, parts[0]))
        titles.append("::".join(parts[1:-1]))
        genres.append(parts[-1] or NO_GENRES)
    return _finish_ratings(ratings), _finish_items(ids, titles, genres)


def _read_100k_release(arc: _Archive, release: Release):
    member = arc.member(release.ratings_file)
    ratings = _read_headerless(arc, member, arc.read(member), "\t", RATING_COLUMNS, _RATING_DTYPES, _RATING_NUMERIC)
    # u.item: id|title|release date|video release date|IMDb URL|19 genre flags
    member = arc.member(release.items_file)
    n_tail = 3 + len(ML100K_GENRES)
    ids, titles, genres = [], [], []
    for n, line in enumerate(_text_lines(arc, member), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 2 + n_tail:
            raise DataError(f"{arc.where(member)} row {n} (line {n}) has {len(parts)} '|'-separated fields, expected {2 + n_tail}")
        flags = parts[-len(ML100K_GENRES):]
        bad = [f for f in flags if f not in ("0", "1")]
        if bad:
            raise DataError(f"{arc.where(member)} row {n} (line {n}) has genre flag {bad[0]!r}, expected 0 or 1")
        ids.append(_parse_id(arc, member, n, parts[0]))
        titles.append("|".join(parts[1:len(parts) - n_tail]))
        genres.append("|".join(g for g, f in zip(ML100K_GENRES, flags) if f == "1") or NO_GENRES)
    return _finish_ratings(ratings), _finish_items(ids, titles, genres)


_READERS = {"csv": _read_csv_release, "dat": _read_dat_release, "100k": _read_100k_release}


def check_release_archive(archive: str | Path, dataset: str = DEFAULT_RELEASE) -> None:
    """DataError unless `archive` opens as a zip holding `dataset`'s ratings and movies files (cheap:
    reads the zip's directory, not the tables)."""
    release = get_release(dataset)
    with _Archive(archive) as arc:
        arc.member(release.ratings_file)
        arc.member(release.items_file)


def read_release(archive: str | Path, dataset: str = DEFAULT_RELEASE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse the ratings and movies of `dataset` straight from its zip `archive`.

    Returns ``(ratings, items)`` as described in the module docstring. Raises :class:`DataError` naming the
    archive and member for a missing or corrupt zip, a missing file or column, or a value that is not a number.
    """
    release = get_release(dataset)
    with _Archive(archive) as arc:
        return _READERS[release.format](arc, release)


# ---------------------------------------------------------------------------------------------------------------
# Split and index
# ---------------------------------------------------------------------------------------------------------------

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array, in place (wrapping arithmetic); returns `x`."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _row_keys(ratings: pd.DataFrame, random_state: int) -> np.ndarray:
    """A pseudo-random uint64 per row that depends only on the row's values and the seed."""
    with np.errstate(over="ignore"):
        key = np.full(len(ratings), _mix(np.array([random_state & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0], dtype=np.uint64)
        for k, col in enumerate(RATING_COLUMNS):
            if col not in ratings:
                continue
            values = ratings[col].to_numpy()
            values = np.asarray(values, dtype=np.float64 if col == "rating" else np.int64).view(np.uint64)
            key += values * np.uint64(_ODD[k])
            _mix(key)
    return key


_ODD = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)


def split_ratings(ratings: pd.DataFrame, val_size: float = 0.15, test_size: float = 0.10,
                  random_state: int = 42) -> dict[str, pd.DataFrame]:
    """Split rating rows at random into ``train``, ``val`` and ``test`` (75/15/10 by default).

    The split is seeded by `random_state` and depends only on the rows' values, never on their order:
    each row gets a hash of (user_id, item_id, rating, timestamp, random_state), the rows with the smallest
    hashes go to test, the next to val, the rest to train. ``round(n * test_size)`` rows go to test and
    ``round(n * val_size)`` to val. Each split keeps the input's row order, with a fresh index.
    """
    check_split_sizes(val_size, test_size)
    n = len(ratings)
    n_test, n_val = int(round(n * test_size)), int(round(n * val_size))
    which = np.zeros(n, dtype=np.int8)  # 0 train, 1 val, 2 test
    if n:
        # the n_test smallest keys, then the next n_val: a partial sort is enough (and O(n))
        kth = [k for k in (n_test, n_test + n_val) if 0 < k < n]
        order = np.argpartition(_row_keys(ratings, random_state), kth) if kth else np.arange(n)
        which[order[:n_test]] = 2
        which[order[n_test:n_test + n_val]] = 1
    return {
        name: ratings[which == code].reset_index(drop=True)
        for name, code in (("train", 0), ("val", 1), ("test", 2))
    }


def index_ids(train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dense indices for the users and items of the train split, in id order.

    Returns ``users(user_id, user_index)`` and ``items(item_id, item_index)``, both int64.
    """
    # pd.unique (hashing) then sorting the few distinct ids: much faster than np.unique on millions of rows
    user_ids = np.sort(pd.unique(train["user_id"].to_numpy(dtype=np.int64)))
    item_ids = np.sort(pd.unique(train["item_id"].to_numpy(dtype=np.int64)))
    users = pd.DataFrame({"user_id": user_ids, "user_index": np.arange(len(user_ids), dtype=np.int64)})
    items = pd.DataFrame({"item_id": item_ids, "item_index": np.arange(len(item_ids), dtype=np.int64)})
    return users, items


def encode(df: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Map `df`'s raw ids to the indices of `users` / `items`.

    Returns ``(users_idx int64, items_idx int64, ratings float32, known_mask bool)``; an id unknown to the
    mapping gets index -1 and ``known_mask`` is True only where both the user and the item are known.
    """
    user_pos = pd.Index(users["user_id"].to_numpy()).get_indexer(df["user_id"].to_numpy())
    item_pos = pd.Index(items["item_id"].to_numpy()).get_indexer(df["item_id"].to_numpy())
    user_index = users["user_index"].to_numpy(dtype=np.int64)
    item_index = items["item_index"].to_numpy(dtype=np.int64)
    known_user, known_item = user_pos >= 0, item_pos >= 0
    # position -1 (unknown) picks the appended sentinel -1
    users_idx = np.append(user_index, np.int64(-1))[user_pos]
    items_idx = np.append(item_index, np.int64(-1))[item_pos]
    ratings = df["rating"].to_numpy(dtype=np.float32) if "rating" in df else np.full(len(df), np.nan, dtype=np.float32)
    return users_idx, items_idx, ratings, known_user & known_item
