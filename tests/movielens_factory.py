"""Small MovieLens zips in the exact format of each release, for tests.

`make_movielens_zip` writes the zip and returns the normalised tables it wrote (what `read_release` must
return), so tests can compare exactly. The helpers at the bottom break a zip in the ways downloads break.
"""

from __future__ import annotations

import csv
import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

# Titles the parsers must get right: a comma (quoted in CSV), a latin-1 letter, a double quote, a colon.
TITLE_COMMA = "American President, The (1995)"
TITLE_LATIN1 = "Misérables, Les (1995)"
TITLE_QUOTE = '"Great Performances" Cats (1998)'
TITLE_COLON = "Star Wars: Episode IV - A New Hope (1977)"
SPECIAL_TITLES = (TITLE_COMMA, TITLE_LATIN1, TITLE_QUOTE, TITLE_COLON)

FORMATS = {
    "ml-latest-small": ("csv", 0.5),
    "ml-25m": ("csv", 0.5),
    "ml-1m": ("dat", 1.0),
    "ml-100k": ("100k", 1.0),
}


@dataclass
class Written:
    """What a factory zip holds, normalised like `read_release`'s output."""

    path: Path
    ratings: pd.DataFrame  # user_id, item_id, rating (float32), timestamp
    items: pd.DataFrame  # item_id, title, genres
    ratings_member: str
    items_member: str


def make_tables(n_users=30, n_items=40, n_ratings=None, random_state=0, step=0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings with unique (user, item) pairs, every user rating several items, and their items."""
    rng = np.random.default_rng(random_state)
    n_ratings = n_ratings if n_ratings is not None else n_users * 10
    per_user = np.full(n_users, n_ratings // n_users)
    per_user[: n_ratings % n_users] += 1
    if per_user.max() > n_items:
        raise ValueError("n_ratings is more than n_users * n_items")
    user_ids = np.arange(1, n_users + 1) * 3  # ids are not dense, like the real ones after filtering
    item_ids = np.arange(1, n_items + 1) * 7
    rows = []
    for u, k in zip(user_ids, per_user):
        for i in rng.choice(item_ids, size=k, replace=False):
            rows.append((u, i))
    pairs = np.array(rows, dtype=np.int64).reshape(-1, 2)
    levels = np.arange(step, 5.0 + step / 2, step) if step < 1 else np.arange(1.0, 6.0)
    ratings = pd.DataFrame({
        "user_id": pairs[:, 0],
        "item_id": pairs[:, 1],
        "rating": rng.choice(levels, size=len(pairs)).astype(np.float32),
        "timestamp": rng.integers(800_000_000, 1_500_000_000, size=len(pairs)).astype(np.int64),
    })
    titles = [SPECIAL_TITLES[k] if k < len(SPECIAL_TITLES) else f"Movie {k} ({1950 + k})" for k in range(n_items)]
    genres = []
    for k in range(n_items):
        if k == n_items - 1:
            genres.append("(no genres listed)")
        else:
            chosen = sorted(rng.choice(len(GENRES_100K) - 1, size=1 + k % 3, replace=False) + 1)
            genres.append("|".join(GENRES_100K[g] for g in chosen))
    items = pd.DataFrame({"item_id": item_ids.astype(np.int64), "title": pd.Series(titles, dtype=str),
                          "genres": pd.Series(genres, dtype=str)})
    return ratings, items


def _fmt_rating(value, dataset) -> str:
    if isinstance(value, str):
        return value
    if FORMATS[dataset][0] == "csv":
        return f"{float(value):.1f}"
    return f"{float(value):g}"


def _csv_bytes(header, rows) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # csv module quoting, CRLF like the releases
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def make_movielens_zip(
    path: str | Path,
    dataset: str = "ml-latest-small",
    n_users: int = 30,
    n_items: int = 40,
    n_ratings: int | None = None,
    random_state: int = 0,
    rating_column: bool = True,
    bad_rating: float | str | None = None,
    bad_row: int = 0,
    root: str | None = None,
    omit: tuple[str, ...] = (),
    compression: int = zipfile.ZIP_DEFLATED,
) -> Written:
    """Write a small `dataset` zip at `path`.

    rating_column  False: the CSV ratings file has no rating column (CSV releases only)
    bad_rating     written instead of the rating of row `bad_row` (a number or any string)
    root           folder inside the zip (default: the dataset name, like the real zips; "" for none)
    omit           file names not to write (e.g. ("u.data",))
    """
    fmt, step = FORMATS[dataset]
    ratings, items = make_tables(n_users, n_items, n_ratings, random_state, step)
    if bad_rating is not None and not isinstance(bad_rating, str):
        ratings.loc[bad_row, "rating"] = np.float32(bad_rating)
    root = dataset if root is None else root
    prefix = f"{root}/" if root else ""
    rating_values = [_fmt_rating(r, dataset) for r in ratings["rating"]]
    if isinstance(bad_rating, str):
        rating_values[bad_row] = bad_rating
    files: dict[str, bytes] = {}

    if fmt == "csv":
        ratings_file, items_file = "ratings.csv", "movies.csv"
        header = ["userId", "movieId", "rating", "timestamp"] if rating_column else ["userId", "movieId", "timestamp"]
        rows = [
            [u, i, r, t] if rating_column else [u, i, t]
            for u, i, r, t in zip(ratings["user_id"], ratings["item_id"], rating_values, ratings["timestamp"])
        ]
        files["ratings.csv"] = _csv_bytes(header, rows)
        files["movies.csv"] = _csv_bytes(["movieId", "title", "genres"], items.itertuples(index=False))
        files["links.csv"] = _csv_bytes(["movieId", "imdbId", "tmdbId"], [[i, 100 + i, 200 + i] for i in items["item_id"]])
        files["tags.csv"] = _csv_bytes(["userId", "movieId", "tag", "timestamp"], [[3, 7, "funny, really", 1]])
        files["README.txt"] = b"Summary\r\n=======\r\nA small test release.\r\n"
    elif fmt == "dat":
        ratings_file, items_file = "ratings.dat", "movies.dat"
        files["ratings.dat"] = "".join(
            f"{u}::{i}::{r}::{t}\n"
            for u, i, r, t in zip(ratings["user_id"], ratings["item_id"], rating_values, ratings["timestamp"])
        ).encode("latin-1")
        files["movies.dat"] = "".join(f"{i}::{t}::{g}\n" for i, t, g in items.itertuples(index=False)).encode("latin-1")
        files["users.dat"] = "".join(f"{u}::M::25::4::02139\n" for u in sorted(set(ratings["user_id"]))).encode("latin-1")
        files["README"] = b"MovieLens 1M test copy\n"
    else:
        ratings_file, items_file = "u.data", "u.item"
        files["u.data"] = "".join(
            f"{u}\t{i}\t{r}\t{t}\n"
            for u, i, r, t in zip(ratings["user_id"], ratings["item_id"], rating_values, ratings["timestamp"])
        ).encode("latin-1")
        lines = []
        for i, t, g in items.itertuples(index=False):
            names = set(g.split("|"))
            flags = ["1" if name in names else "0" for name in GENRES_100K]
            lines.append(f"{i}|{t}|01-Jan-1995||http://us.imdb.com/M/title-exact?{i}|{'|'.join(flags)}\n")
        files["u.item"] = "".join(lines).encode("latin-1")
        files["u.genre"] = "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES_100K)).encode("latin-1")
        files["ua.base"] = files["u.data"]  # other files of the real zip, never to be picked by mistake
        files["README"] = b"MovieLens 100K test copy\n"
        # the genre-less last item has no flag set; the parser reads it back as "(no genres listed)"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        if root:
            zf.writestr(prefix, b"")  # the folder entry, as the real zips have
        for name, data in files.items():
            if name not in omit:
                zf.writestr(prefix + name, data)
    return Written(path, ratings, items, prefix + ratings_file, prefix + items_file)


# ---------------------------------------------------------------------------------------------------------------
# Breaking zips
# ---------------------------------------------------------------------------------------------------------------

def write_not_a_zip(path: str | Path) -> Path:
    """An HTML error page saved under a .zip name (what a proxy or a bad URL gives)."""
    path = Path(path)
    path.write_bytes(b"<html><body>404 Not Found</body></html>\n")
    return path


def truncate_zip(path: str | Path, keep: float = 0.5) -> Path:
    """Cut the zip short, as an interrupted download does (the central directory is lost)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corrupt_member(path: str | Path, member: str) -> Path:
    """Flip bytes in the middle of `member`'s stored data; reading it then fails (CRC or inflate error)."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    middle = start + info.compress_size // 2
    for k in range(middle, min(middle + 8, start + info.compress_size)):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    return path
