"""Parse `--param name=value` and `--tag key=value` options."""

from __future__ import annotations

from typing import Any

from modelyard.errors import ModelyardError


def parse_pairs(pairs: list[str] | None, what: str = "--param") -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ModelyardError(f"{what} {pair!r} is not of the form name=value")
        result[name.strip()] = value.strip()
    return result


def coerce(name: str, value: Any, default: Any) -> Any:
    """Convert a string to the type of the parameter's default (bool, int, float, str)."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            lowered = value.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        kind = {"bool": "true or false", "int": "an integer", "float": "a number"}[type(default).__name__]
        raise ModelyardError(f"parameter {name}={value!r}: expected {kind}") from None
    return value


def coerce_params(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ModelyardError(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    return {k: coerce(k, v, defaults[k]) for k, v in values.items()}
