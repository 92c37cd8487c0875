"""Quality checks of the recommender tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from movielens_factory import make_tables

from modelyard.errors import QualityError
from modelyard.recommender.checks import check_tables
from modelyard.recommender.data import split_ratings


@pytest.fixture
def tables():
    ratings, items = make_tables(n_users=20, n_items=30, n_ratings=400, random_state=1)
    parts = split_ratings(ratings)
    # keep val/test to users and items seen in train, so a clean set has no warnings at all
    train = parts["train"]
    for key in ("val", "test"):
        df = parts[key]
        parts[key] = df[df["user_id"].isin(train["user_id"]) & df["item_id"].isin(train["item_id"])].reset_index(drop=True)
    return {**parts, "items": items}


def _check(report, name):
    matches = [c for c in report.checks if c.name == name]
    assert len(matches) == 1, [c.name for c in report.checks]
    return matches[0]


def test_clean_tables_pass(tables):
    report = check_tables(tables, 0.5, 5.0, "ml-latest-small")
    assert report.passed, report.render_text()
    assert all(c.passed for c in report.checks), report.render_text()
    names = [c.name for c in report.checks]
    for table in ("train", "val", "test"):
        for check in ("required columns", "dtypes", "no nulls", "rating within [0.5, 5]", "ids positive"):
            assert f"{table}: {check}" in names
    assert "items: item_id unique" in names
    report.raise_for_failures()


def test_rating_out_of_scale_fails_naming_row_and_value(tables):
    tables["train"].loc[12, "rating"] = np.float32(7.0)
    report = check_tables(tables, 0.5, 5.0, "ml-latest-small")
    assert not report.passed
    check = _check(report, "train: rating within [0.5, 5]")
    assert not check.passed and check.n_failed == 1
    assert check.examples == ["train row 12: rating=7.0"]
    assert [c.name for c in report.failures] == ["train: rating within [0.5, 5]"]
    with pytest.raises(QualityError, match=r"train row 12: rating=7\.0") as info:
        report.raise_for_failures()
    assert info.value.report is report


def test_scale_of_the_release_is_used(tables):
    tables["val"].loc[0, "rating"] = np.float32(0.5)  # fine for ml-latest-small, not for ml-1m
    assert check_tables(tables, 0.5, 5.0, "s").passed
    check = _check(check_tables(tables, 1, 5, "s"), "val: rating within [1, 5]")
    assert check.n_failed >= 1 and "val row 0: rating=0.5" in check.examples


def test_nulls_are_reported_per_row(tables):
    train = tables["train"]
    train["rating"] = train["rating"].astype("float32")
    train.loc[[3, 8], "rating"] = np.nan
    tables["items"].loc[2, "title"] = np.nan
    report = check_tables(tables, 0.5, 5.0, "s")
    check = _check(report, "train: no nulls")
    assert check.n_failed == 2
    assert check.examples == ["train row 3: rating is null", "train row 8: rating is null"]
    assert _check(report, "items: no nulls").examples == ["items row 2: title is null"]
    assert _check(report, "train: rating within [0.5, 5]").passed  # a null is not also out of range


def test_missing_column_and_wrong_dtype(tables):
    tables["test"] = tables["test"].drop(columns=["rating"])
    tables["val"]["user_id"] = tables["val"]["user_id"].astype("float64")
    report = check_tables(tables, 0.5, 5.0, "s")
    check = _check(report, "test: required columns")
    assert check.n_failed == 1
    assert check.examples == ["test: column 'rating' missing (columns: user_id, item_id, timestamp)"]
    assert _check(report, "val: dtypes").examples == ["val: column 'user_id' is float64, expected int64"]


def test_non_positive_ids_and_duplicate_item_ids(tables):
    tables["train"].loc[4, "user_id"] = 0
    items = tables["items"]
    items.loc[5, "item_id"] = items.loc[6, "item_id"]
    report = check_tables(tables, 0.5, 5.0, "s")
    assert _check(report, "train: ids positive").examples == ["train row 4: user_id=0"]
    check = _check(report, "items: item_id unique")
    assert check.n_failed == 2 and check.examples[0].startswith("items row 5: item_id=")


def test_duplicate_pairs_across_splits(tables):
    val_row = tables["val"].iloc[[0]].copy()
    tables["test"] = pd.concat([tables["test"], val_row], ignore_index=True)  # same pair in val and test
    tables["train"] = pd.concat([tables["train"], tables["train"].iloc[[1]]], ignore_index=True)  # twice in train
    report = check_tables(tables, 0.5, 5.0, "s")
    check = _check(report, "ratings: no duplicate (user_id, item_id) across train/val/test")
    assert not check.passed and check.n_failed == 2
    user, item = val_row["user_id"].iloc[0], val_row["item_id"].iloc[0]
    last = len(tables["test"]) - 1
    assert f"user_id={user}, item_id={item} in val row 0, test row {last}" in check.examples


def test_duplicate_pairs_with_null_ids(tables):
    """Float ids (a null made them float) take the slower general path and still find the duplicate."""
    tables["train"] = pd.concat([tables["train"], tables["train"].iloc[[0]]], ignore_index=True)
    tables["train"]["user_id"] = tables["train"]["user_id"].astype("float64")
    tables["train"].loc[5, "user_id"] = np.nan
    report = check_tables(tables, 0.5, 5.0, "s")
    check = _check(report, "ratings: no duplicate (user_id, item_id) across train/val/test")
    assert check.n_failed == 1 and f"train row 0, train row {len(tables['train']) - 1}" in check.examples[0]
    assert _check(report, "train: no nulls").examples == ["train row 5: user_id is null"]


def test_rated_items_missing_from_items(tables):
    tables["train"].loc[[2, 5], "item_id"] = 99999
    report = check_tables(tables, 0.5, 5.0, "s")
    check = _check(report, "ratings: every item_id is in items")
    assert check.severity == "error" and check.n_failed == 2
    assert check.examples == ["train row 2: item_id=99999", "train row 5: item_id=99999"]
    assert "1 unknown item ids in 2 ratings" in check.detail


def test_unknown_val_users_are_a_warning_with_counts(tables):
    val = tables["val"]
    val.loc[[0, 1, 2], "user_id"] = [1001, 1001, 1002]
    report = check_tables(tables, 0.5, 5.0, "s")
    assert report.passed  # a warning does not stop the pipeline
    check = _check(report, "val: users unknown to train")
    assert check.severity == "warning" and not check.passed
    assert check.n_failed == 3
    assert check.detail == f"2 users not in train, 3 of {len(val)} val ratings; excluded from evaluation"
    assert check.examples == ["val row 0: user_id=1001", "val row 1: user_id=1001", "val row 2: user_id=1002"]
    assert _check(report, "test: users unknown to train").passed
    assert "[WARN] val: users unknown to train: 3 failing" in report.render_text()


def test_missing_table_is_reported(tables):
    del tables["items"]
    report = check_tables(tables, 0.5, 5.0, "s")
    assert not report.passed
    assert _check(report, "items: table present").n_failed == 1
