"""Data-quality checks of the recommender's tables: the train/val/test rating splits and the items.

:func:`check_tables` returns a :class:`~modelyard.quality.QualityReport`; the caller decides whether to
stop (``report.raise_for_failures()``). Per-table checks (columns, dtypes, nulls, rating scale, positive
ids, unique item ids) run through pandera with ``lazy=True`` so every failure is collected at once; the
cross-table checks (duplicates across splits, unknown items, val/test ids unseen in train) are pandas.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pandera.pandas as pa

from modelyard.quality import QualityReport

SPLITS = ("train", "val", "test")
RATING_DTYPES = {"user_id": "int64", "item_id": "int64", "rating": "float32", "timestamp": "int64"}
ITEM_DTYPES = {"item_id": "int64", "title": "str", "genres": "str"}
MAX_EXAMPLES = 5

_REQUIRED, _DTYPES, _NULLS, _IDS, _UNIQUE = "required columns", "dtypes", "no nulls", "ids positive", "item_id unique"


def ratings_schema(rating_min: float, rating_max: float) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "user_id": pa.Column("int64", pa.Check.gt(0)),
            "item_id": pa.Column("int64", pa.Check.gt(0)),
            "rating": pa.Column("float32", pa.Check.in_range(rating_min, rating_max)),
            "timestamp": pa.Column("int64"),
        },
        name="ratings",
    )


def items_schema() -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "item_id": pa.Column("int64", pa.Check.gt(0), unique=True),
            "title": pa.Column(str),
            "genres": pa.Column(str),
        },
        name="items",
    )


def _range_label(rating_min: float, rating_max: float) -> str:
    return f"rating within [{rating_min:g}, {rating_max:g}]"


def _category(check: str, range_label: str) -> str:
    if check == "column_in_dataframe":
        return _REQUIRED
    if check.startswith("dtype("):
        return _DTYPES
    if check == "not_nullable":
        return _NULLS
    if check.startswith("in_range"):
        return range_label
    if check.startswith("greater_than"):
        return _IDS
    if check in ("field_uniqueness", "unique"):
        return _UNIQUE
    return check


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "null" if math.isnan(value) else repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _schema_checks(report: QualityReport, table: str, df: pd.DataFrame, schema: pa.DataFrameSchema,
                   expected_dtypes: dict[str, str], categories: list[str], range_label: str) -> None:
    """Validate `df` lazily and add one CheckResult per category, failing or not."""
    found: dict[str, tuple[int, list[str]]] = {}
    try:
        schema.validate(df, lazy=True)
        cases = None
    except pa.errors.SchemaErrors as e:
        cases = e.failure_cases
    if cases is not None and len(cases):
        cases = cases.assign(category=[_category(str(c), range_label) for c in cases["check"]])
        for category, group in cases.groupby("category", sort=False):
            if category == _REQUIRED:
                missing = [str(v) for v in group["failure_case"]]
                present = ", ".join(map(str, df.columns))
                found[category] = (len(missing), [f"{table}: column {m!r} missing (columns: {present})" for m in missing])
            elif category == _DTYPES:
                # pandera reports a wrong dtype per column (sometimes per row): describe the column itself
                columns = [c for c in dict.fromkeys(group["column"]) if c in df.columns]
                found[category] = (len(columns), [
                    f"{table}: column {c!r} is {df[c].dtype}, expected {expected_dtypes[c]}" for c in columns
                ])
            else:
                rows = group[group["index"].notna()]
                examples = []
                for column, value, index in rows[["column", "failure_case", "index"]].head(MAX_EXAMPLES).itertuples(index=False):
                    if category == _NULLS:
                        examples.append(f"{table} row {index}: {column} is null")
                    elif category == _UNIQUE:
                        examples.append(f"{table} row {index}: {column}={_fmt(value)} is not unique")
                    else:
                        examples.append(f"{table} row {index}: {column}={_fmt(value)}")
                n_failed = rows["index"].nunique() if len(rows) else len(group)
                found[category] = (int(n_failed), examples)
    for category in categories + [c for c in found if c not in categories]:
        n_failed, examples = found.get(category, (0, []))
        report.add(f"{table}: {category}", n_failed, examples)


def _has(df: pd.DataFrame | None, *columns: str) -> bool:
    return df is not None and all(c in df.columns for c in columns)


def _pair_key(pairs: pd.DataFrame) -> np.ndarray | None:
    """user_id * (max item_id + 1) + item_id as int64, or None where ids are not non-negative ints that fit."""
    columns = ("user_id", "item_id")
    if not len(pairs) or not all(pd.api.types.is_integer_dtype(pairs[c].dtype) and not pairs[c].hasnans for c in columns):
        return None
    users, items = pairs["user_id"].to_numpy(dtype=np.int64), pairs["item_id"].to_numpy(dtype=np.int64)
    if users.min() < 0 or items.min() < 0:
        return None
    width = int(items.max()) + 1
    if int(users.max()) * width + width > np.iinfo(np.int64).max:
        return None
    return users * np.int64(width) + items


def _same(values: pd.Series, value) -> np.ndarray:
    """values == value, where a null equals a null (duplicated() treats them so)."""
    if pd.isna(value):
        return values.isna().to_numpy()
    return (values == value).to_numpy()


def _duplicates(report: QualityReport, splits: dict[str, pd.DataFrame]) -> None:
    parts = {name: df for name, df in splits.items() if _has(df, "user_id", "item_id")}
    name = "ratings: no duplicate (user_id, item_id) across train/val/test"
    if not parts:
        report.add(name, 0, detail="skipped: no split has user_id and item_id")
        return
    pairs = pd.concat([df[["user_id", "item_id"]] for df in parts.values()], ignore_index=True)
    key = _pair_key(pairs)
    if key is not None:  # sorting one int64 key is far faster than hashing pairs (25M rows: seconds, not minutes)
        ordered = np.sort(key)
        repeats = ordered[1:] == ordered[:-1]
        n_failed = int(repeats.sum())
    else:
        n_failed = int(pairs.duplicated(keep="first").sum())
    examples = []
    if n_failed:
        if key is not None:
            all_dups = pd.Series(key).isin(np.unique(ordered[1:][repeats])).to_numpy()
        else:
            all_dups = pairs.duplicated(keep=False).to_numpy()
        dup_pos = np.flatnonzero(all_dups)
        dup_pairs = pairs.iloc[dup_pos]
        names, frames = list(parts), list(parts.values())
        starts = np.cumsum([0] + [len(df) for df in frames])
        for user, item in dup_pairs.drop_duplicates().head(MAX_EXAMPLES).itertuples(index=False):
            same = _same(dup_pairs["user_id"], user) & _same(dup_pairs["item_id"], item)
            where = []
            for pos in dup_pos[same]:
                k = int(np.searchsorted(starts, pos, side="right")) - 1
                where.append(f"{names[k]} row {frames[k].index[pos - starts[k]]}")
            examples.append(f"user_id={_fmt(user)}, item_id={_fmt(item)} in {', '.join(where)}")
    report.add(name, n_failed, examples, detail=f"{n_failed} ratings repeat a pair" if n_failed else "")


def _unknown_items(report: QualityReport, splits: dict[str, pd.DataFrame], items: pd.DataFrame | None) -> None:
    name = "ratings: every item_id is in items"
    if not _has(items, "item_id"):
        report.add(name, 0, detail="skipped: items has no item_id")
        return
    known = pd.Index(items["item_id"].dropna().unique())
    n_rows, unknown_ids, examples = 0, set(), []
    for split, df in splits.items():
        if not _has(df, "item_id"):
            continue
        ids = df["item_id"]
        bad = (ids.notna() & ~ids.isin(known)).to_numpy()
        if bad.any():
            n_rows += int(bad.sum())
            unknown_ids.update(ids[bad].unique().tolist())
            for index, value in ids[bad].head(MAX_EXAMPLES - len(examples)).items():
                examples.append(f"{split} row {index}: item_id={_fmt(value)}")
    detail = f"{len(unknown_ids)} unknown item ids in {n_rows} ratings" if n_rows else ""
    report.add(name, n_rows, examples, detail=detail)


def _unseen_in_train(report: QualityReport, splits: dict[str, pd.DataFrame]) -> None:
    train = splits.get("train")
    for column, what in (("user_id", "users"), ("item_id", "items")):
        if not _has(train, column):
            continue
        known = pd.Index(train[column].dropna().unique())
        for split in ("val", "test"):
            df = splits.get(split)
            if not _has(df, column):
                continue
            ids = df[column]
            bad = (ids.notna() & ~ids.isin(known)).to_numpy()
            n_rows, n_ids = int(bad.sum()), int(ids[bad].nunique())
            examples = [f"{split} row {index}: {column}={_fmt(value)}" for index, value in ids[bad].head(MAX_EXAMPLES).items()]
            detail = (f"{n_ids} {what} not in train, {n_rows} of {len(df)} {split} ratings; excluded from evaluation"
                      if n_rows else "")
            report.add(f"{split}: {what} unknown to train", n_rows, examples, detail=detail, severity="warning")


def check_tables(tables: dict[str, pd.DataFrame], rating_min: float, rating_max: float, subject: str) -> QualityReport:
    """Check the `train`, `val`, `test` rating splits and the `items` of one dataset.

    Errors: required columns, dtypes, nulls, ratings outside [rating_min, rating_max], non-positive ids,
    duplicate item ids in items, duplicate (user_id, item_id) pairs across all splits together, rated items
    missing from items. Warnings: val/test users and items unseen in train (excluded from evaluation).
    """
    report = QualityReport(subject)
    range_label = _range_label(rating_min, rating_max)
    for name in (*SPLITS, "items"):
        if not isinstance(tables.get(name), pd.DataFrame):
            report.add(f"{name}: table present", 1, [f"no {name} table (tables: {', '.join(tables)})"])
    splits = {name: tables[name] for name in SPLITS if isinstance(tables.get(name), pd.DataFrame)}
    items = tables.get("items") if isinstance(tables.get("items"), pd.DataFrame) else None

    schema = ratings_schema(rating_min, rating_max)
    for name, df in splits.items():
        _schema_checks(report, name, df, schema, RATING_DTYPES, [_REQUIRED, _DTYPES, _NULLS, range_label, _IDS], range_label)
    if items is not None:
        _schema_checks(report, "items", items, items_schema(), ITEM_DTYPES, [_REQUIRED, _DTYPES, _NULLS, _IDS, _UNIQUE], range_label)

    _duplicates(report, splits)
    _unknown_items(report, splits, items)
    _unseen_in_train(report, splits)
    return report
