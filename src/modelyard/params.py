"""Parse `--param name=value` and `--tag key=value` options."""

from __future__ import annotations

import difflib
import json
import math
from typing import Any

from modelyard.errors import ModelyardError, ParamError


def parse_pairs(pairs: list[str] | None, what: str = "--param") -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ModelyardError(f"{what} {pair!r} is not of the form name=value")
        result[name.strip()] = value.strip()
    return result


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def as_type(value: Any, typ: type, what: str) -> Any:
    """`value` as `typ` (str, int, float, bool), strings from the CLI or KFP included.

    Raises ModelyardError naming `what` when it cannot be: "2.5" is no int, 3 is no bool, True no number.
    """
    if typ is str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (dict, list)):
            return json.dumps(value, default=str)
        return value if isinstance(value, str) else str(value)
    try:
        if typ is bool:
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, (bool, int, float)) and value in (0, 1):
                return bool(value)
        elif typ is int and not isinstance(value, bool):
            number = float(value)
            if number.is_integer():
                return int(number)
        elif typ is float and not isinstance(value, bool):
            return float(value)
        elif typ not in (bool, int, float):
            return value
    except (TypeError, ValueError, OverflowError):
        pass
    kind = {bool: "true or false", int: "an integer", float: "a number"}[typ]
    raise ParamError(f"{what}: {value!r} is not {kind}")


def coerce(name: str, value: Any, default: Any) -> Any:
    """`value` typed like the parameter's default (no default, None: unchanged)."""
    return value if default is None else as_type(value, type(default), f"parameter {name!r}")


def coerce_params(values: dict[str, Any], defaults: dict[str, Any], options: dict[str, str] | None = None) -> dict[str, Any]:
    """`--param` values typed like their defaults. `options` maps the parameters that a command sets
    from its own options (``{"source": "--source"}``) to that option: they are refused as `--param`."""
    options = options or {}
    taken = sorted(set(values) & set(options))
    if taken:
        raise ModelyardError("; ".join(f"{name} is set with {options[name]}, not --param" for name in taken))
    settable = set(defaults) - set(options)
    unknown = sorted(set(values) - settable)
    if unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, settable, n=1, cutoff=0.6))
                 else name for name in unknown]
        raise ModelyardError(f"unknown parameter(s): {', '.join(hints)}; known: {', '.join(sorted(settable))}")
    return {k: coerce(k, v, defaults[k]) for k, v in values.items()}


def check_finite(values: dict[str, Any]) -> None:
    """ValueError naming the first float value that is NaN or infinite."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"parameter {name!r} must be a finite number, got {value}")


def check_split_sizes(val_size: float, test_size: float) -> None:
    """ValueError unless val takes a share in (0, 1) (validation needs one), test one in [0, 1), and
    together they leave room for train."""
    if not 0 < val_size < 1:
        raise ValueError(f"parameter 'val_size' must be in (0, 1): the validate step needs validation data; got {val_size}")
    if not 0 <= test_size < 1:
        raise ValueError(f"parameter 'test_size' must be in [0, 1), got {test_size}")
    if not 0 < val_size + test_size < 1:
        raise ValueError(f"parameters 'val_size' + 'test_size' must be between 0 and 1 (exclusive), "
                         f"got {val_size} + {test_size} = {val_size + test_size}")


def check_tags(tags: dict[str, str], reserved: tuple[str, ...]) -> dict[str, str]:
    """User tags, refusing the keys modelyard sets itself (they would be overwritten)."""
    taken = sorted(set(tags) & set(reserved))
    if taken:
        raise ModelyardError(f"--tag {', '.join(taken)}: set by modelyard itself; reserved tag keys: {', '.join(reserved)}")
    return tags
