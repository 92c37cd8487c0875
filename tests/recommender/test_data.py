"""MovieLens releases: parsing each format, errors that name the file, the split, the id maps."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
from movielens_factory import (
    TITLE_COLON, TITLE_COMMA, TITLE_LATIN1, TITLE_QUOTE, corrupt_member, make_movielens_zip, truncate_zip,
    write_not_a_zip,
)

from modelyard.errors import DataError, ModelyardError
from modelyard.recommender.data import (
    RELEASES, encode, get_release, index_ids, read_release, split_ratings,
)

DATASETS = ["ml-latest-small", "ml-100k", "ml-1m", "ml-25m"]


# --- releases --------------------------------------------------------------------------------------------------

def test_releases_are_the_official_ones():
    assert set(RELEASES) == set(DATASETS)
    for name, release in RELEASES.items():
        assert release.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert release.sha256 is None or (len(release.sha256) == 64 and int(release.sha256, 16) >= 0)
    assert (get_release("ml-latest-small").rating_min, get_release("ml-latest-small").rating_max) == (0.5, 5.0)
    assert (get_release("ml-25m").rating_min, get_release("ml-25m").rating_max) == (0.5, 5.0)
    assert (get_release("ml-100k").rating_min, get_release("ml-100k").rating_max) == (1, 5)
    assert (get_release("ml-1m").rating_min, get_release("ml-1m").rating_max) == (1, 5)


def test_unknown_release_names_the_known_ones():
    with pytest.raises(DataError, match=r"'ml-7'.*ml-latest-small, ml-100k, ml-1m, ml-25m") as info:
        get_release("ml-7")
    assert isinstance(info.value, ModelyardError)


# --- parsing ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
def test_each_release_parses_to_exactly_what_was_written(tmp_path, dataset):
    written = make_movielens_zip(tmp_path / f"{dataset}.zip", dataset, n_users=12, n_items=20, n_ratings=97)
    ratings, items = read_release(written.path, dataset)

    assert list(ratings.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert [str(t) for t in ratings.dtypes] == ["int64", "int64", "float32", "int64"]
    assert list(items.columns) == ["item_id", "title", "genres"]
    assert str(items["item_id"].dtype) == "int64"
    assert len(ratings) == 97 and len(items) == 20
    pd.testing.assert_frame_equal(ratings, written.ratings)
    pd.testing.assert_frame_equal(items, written.items)

    titles = items.set_index("item_id")["title"]
    assert titles[7] == TITLE_COMMA  # quoted in CSV, plain in the others
    assert titles[14] == TITLE_LATIN1  # é: UTF-8 in CSV, latin-1 in .dat / u.item
    assert titles[21] == TITLE_QUOTE
    assert titles[28] == TITLE_COLON  # a ':' inside a '::'-separated line
    assert items["genres"].iloc[-1] == "(no genres listed)"
    assert all(g and "||" not in g for g in items["genres"])


def test_ml_latest_small_is_crlf_csv_with_quoted_titles(tmp_path):
    written = make_movielens_zip(tmp_path / "ml-latest-small.zip")
    with zipfile.ZipFile(written.path) as zf:
        assert written.ratings_member == "ml-latest-small/ratings.csv"
        movies = zf.read("ml-latest-small/movies.csv")
    assert b"\r\n" in movies and b'"American President, The (1995)"' in movies
    assert b'"""Great Performances"" Cats (1998)"' in movies
    _, items = read_release(written.path, "ml-latest-small")
    assert not items["genres"].str.contains("\r").any()


def test_ml_100k_genres_follow_u_genre_order(tmp_path):
    written = make_movielens_zip(tmp_path / "ml-100k.zip", "ml-100k")
    with zipfile.ZipFile(written.path) as zf:
        line = zf.read("ml-100k/u.item").decode("latin-1").splitlines()[0]
    flags = line.split("|")[-19:]
    _, items = read_release(written.path, "ml-100k")
    from movielens_factory import GENRES_100K
    assert items["genres"].iloc[0] == "|".join(g for g, f in zip(GENRES_100K, flags) if f == "1")


def test_members_are_found_in_any_folder(tmp_path):
    flat = make_movielens_zip(tmp_path / "flat.zip", "ml-1m", root="")
    nested = make_movielens_zip(tmp_path / "nested.zip", "ml-1m", root="data/ml-1m")
    assert flat.ratings_member == "ratings.dat" and nested.ratings_member == "data/ml-1m/ratings.dat"
    pd.testing.assert_frame_equal(read_release(flat.path, "ml-1m")[0], flat.ratings)
    pd.testing.assert_frame_equal(read_release(nested.path, "ml-1m")[0], nested.ratings)


# --- parse errors ----------------------------------------------------------------------------------------------

def test_not_a_zip_is_a_data_error_naming_the_archive(tmp_path):
    path = write_not_a_zip(tmp_path / "ml-latest-small.zip")
    with pytest.raises(DataError, match="ml-latest-small.zip is not a readable zip"):
        read_release(path, "ml-latest-small")
    with pytest.raises(DataError, match="not found"):
        read_release(tmp_path / "missing.zip", "ml-latest-small")


def test_truncated_zip_is_a_data_error(tmp_path):
    written = make_movielens_zip(tmp_path / "ml-100k.zip", "ml-100k")
    truncate_zip(written.path)
    with pytest.raises(DataError, match="ml-100k.zip"):
        read_release(written.path, "ml-100k")


@pytest.mark.parametrize("dataset", ["ml-latest-small", "ml-100k", "ml-1m"])
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_corrupt_member_is_a_data_error_naming_the_member(tmp_path, dataset, compression):
    written = make_movielens_zip(tmp_path / f"{dataset}.zip", dataset, compression=compression)
    corrupt_member(written.path, written.ratings_member)
    with pytest.raises(DataError, match=f"{dataset}.zip: {written.ratings_member} is corrupt"):
        read_release(written.path, dataset)


@pytest.mark.parametrize("dataset,missing", [("ml-latest-small", "movies.csv"), ("ml-100k", "u.data"), ("ml-1m", "movies.dat")])
def test_missing_member_names_the_file(tmp_path, dataset, missing):
    written = make_movielens_zip(tmp_path / f"{dataset}.zip", dataset, omit=(missing,))
    with pytest.raises(DataError, match=f"{dataset}.zip has no file {missing}"):
        read_release(written.path, dataset)


def test_missing_rating_column_names_file_and_column(tmp_path):
    written = make_movielens_zip(tmp_path / "ml-latest-small.zip", rating_column=False)
    with pytest.raises(DataError) as info:
        read_release(written.path, "ml-latest-small")
    assert "ml-latest-small/ratings.csv has no column 'rating' (columns: userId, movieId, timestamp)" in str(info.value)


@pytest.mark.parametrize("dataset,line", [("ml-latest-small", 8), ("ml-100k", 7), ("ml-1m", 7)])
def test_non_numeric_value_names_row_and_column(tmp_path, dataset, line):
    written = make_movielens_zip(tmp_path / f"{dataset}.zip", dataset, bad_rating="4.x", bad_row=6)
    with pytest.raises(DataError) as info:
        read_release(written.path, dataset)
    message = str(info.value)
    assert written.ratings_member in message
    assert f"row 7 (line {line}), column 'rating' has '4.x', not a number" in message


def test_out_of_scale_rating_parses_for_the_checks_to_catch(tmp_path):
    written = make_movielens_zip(tmp_path / "ml-1m.zip", "ml-1m", bad_rating=7, bad_row=3)
    ratings, _ = read_release(written.path, "ml-1m")
    assert ratings["rating"].iloc[3] == 7.0


# --- split -----------------------------------------------------------------------------------------------------

def _ratings(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": rng.integers(1, 50, n).astype("int64"),
        "item_id": np.arange(n, dtype="int64") + 1,
        "rating": rng.choice(np.arange(0.5, 5.5, 0.5), n).astype("float32"),
        "timestamp": rng.integers(0, 10**9, n).astype("int64"),
    })


@pytest.mark.parametrize("n", [1000, 997, 41])
def test_split_is_75_15_10(n):
    ratings = _ratings(n)
    parts = split_ratings(ratings)
    assert list(parts) == ["train", "val", "test"]
    assert abs(len(parts["train"]) - 0.75 * n) <= 1
    assert abs(len(parts["val"]) - 0.15 * n) <= 1
    assert abs(len(parts["test"]) - 0.10 * n) <= 1
    together = pd.concat(parts.values()).sort_values("item_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(together, ratings)  # a partition: every row exactly once
    for part in parts.values():
        assert part.index.equals(pd.RangeIndex(len(part)))
        assert list(part.dtypes) == list(ratings.dtypes)


def test_split_is_identical_run_after_run_and_seeded():
    ratings = _ratings()
    a, b = split_ratings(ratings), split_ratings(ratings.copy())
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key])
    other = split_ratings(ratings, random_state=7)
    assert not a["test"]["item_id"].equals(other["test"]["item_id"])


def test_split_does_not_depend_on_row_order():
    ratings = _ratings()
    shuffled = ratings.sample(frac=1.0, random_state=3).reset_index(drop=True)
    a, b = split_ratings(ratings), split_ratings(shuffled)
    for key in a:
        assert set(a[key]["item_id"]) == set(b[key]["item_id"])


def test_split_custom_sizes_and_validation():
    parts = split_ratings(_ratings(200), val_size=0.2, test_size=0.3)
    assert [len(p) for p in parts.values()] == [100, 40, 60]
    for val, test in [(0.5, 0.5), (0.0, 0.0), (0.0, 0.2), (-0.1, 0.2), (0.9, 0.2), (1.0, 0.0)]:
        with pytest.raises(ValueError, match="val_size|test_size"):
            split_ratings(_ratings(20), val_size=val, test_size=test)


# --- ids -------------------------------------------------------------------------------------------------------

def test_index_ids_and_encode():
    train = pd.DataFrame({"user_id": [30, 10, 30, 20], "item_id": [5, 9, 7, 5],
                          "rating": np.array([1, 2, 3, 4], "float32"), "timestamp": [0, 0, 0, 0]})
    users, items = index_ids(train)
    assert users.to_dict("list") == {"user_id": [10, 20, 30], "user_index": [0, 1, 2]}
    assert items.to_dict("list") == {"item_id": [5, 7, 9], "item_index": [0, 1, 2]}
    assert all(str(t) == "int64" for t in [*users.dtypes, *items.dtypes])

    test = pd.DataFrame({"user_id": [20, 99, 30, 10], "item_id": [9, 5, 42, 7], "rating": [5.0, 4.0, 3.0, 2.5]})
    u, i, r, known = encode(test, users, items)
    assert u.tolist() == [1, -1, 2, 0] and u.dtype == np.int64
    assert i.tolist() == [2, 0, -1, 1] and i.dtype == np.int64
    assert r.tolist() == [5.0, 4.0, 3.0, 2.5] and r.dtype == np.float32
    assert known.tolist() == [True, False, False, True] and known.dtype == bool

    empty_users, empty_items = index_ids(train.iloc[:0])
    u, i, _, known = encode(test, empty_users, empty_items)
    assert u.tolist() == [-1] * 4 and not known.any()


def test_empty_id_is_an_error_but_an_empty_rating_is_left_to_the_checks(tmp_path):
    movies = "movieId,title,genres\r\n2,NA,Drama\r\n3,\"a, b\",Comedy\r\n"
    path = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\r\n1,2,,5\r\n1,3,4.0,6\r\n,3,3.0,7\r\n")
        zf.writestr("ml-latest-small/movies.csv", movies)
    with pytest.raises(DataError, match=r"ratings.csv row 3 \(line 4\), column 'userId' is empty"):
        read_release(path, "ml-latest-small")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\r\n1,2,,5\r\n1,3,4.0,6\r\n")
        zf.writestr("ml-latest-small/movies.csv", movies)
    ratings, items = read_release(path, "ml-latest-small")
    assert ratings["rating"].isna().tolist() == [True, False]
    assert items["title"].tolist() == ["NA", "a, b"]  # a title is never read as a missing value
