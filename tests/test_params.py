"""One conversion of parameter values (CLI strings, KFP inputs and outputs, Python values) to their types."""

from __future__ import annotations

import pytest

from modelyard.errors import ModelyardError
from modelyard.params import as_type, coerce, parse_pairs


@pytest.mark.parametrize(("value", "typ", "expected"), [
    (True, str, "true"), ({"a": 1}, str, '{"a": 1}'), (7, str, "7"),
    (3, float, 3.0), ("1e-3", float, 0.001),
    ("4", int, 4), ("1e3", int, 1000), (2.0, int, 2),
    ("false", bool, False), (" Yes ", bool, True), (1, bool, True), ("off", bool, False),
])
def test_values_convert_to_their_type(value, typ, expected):
    converted = as_type(value, typ, "x")
    assert converted == expected and type(converted) is typ


@pytest.mark.parametrize(("value", "typ", "message"), [
    ("abc", int, "x: 'abc' is not an integer"), ("2.5", int, "x: '2.5' is not an integer"),
    (True, int, "x: True is not an integer"), (False, float, "x: False is not a number"),
    ("maybe", bool, "x: 'maybe' is not true or false"), (3, bool, "x: 3 is not true or false"),
    ("inf" * 2, float, "is not a number"),
])
def test_wrong_values_name_what_they_are(value, typ, message):
    with pytest.raises(ModelyardError, match=message) as err:
        as_type(value, typ, "x")
    assert isinstance(err.value, ValueError)  # also what resolve_params and check_params promise


def test_coerce_types_like_the_default_and_names_the_parameter():
    assert coerce("epochs", "3", 30) == 3 and coerce("source", "a.zip", None) == "a.zip"
    with pytest.raises(ModelyardError, match="parameter 'epochs': 'many' is not an integer"):
        coerce("epochs", "many", 30)
    assert parse_pairs(["a=1", " b = x=y "]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ModelyardError, match="'nope' is not of the form name=value"):
        parse_pairs(["nope"])
