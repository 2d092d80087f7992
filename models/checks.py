"""Rule helpers for constructor arguments: each raises a ValueError that starts with `name=value` and says
what was expected (`num_heads=0: expected an integer >= 1`).

Constructors call them with their parameter names, which are the YAML keys of configs/model/*.yaml; whoever
builds from a config prefixes the key's place (`model.net.`), so one rule gives one message everywhere.
Each helper returns the value (a list for sequences: Hydra hands over ListConfigs) so a check can sit where
the value is first used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML `true` must not pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def show(value: Any) -> str:
    """How a value is quoted in a message: strings in quotes (pool='max'), lists as YAML writes them."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Sequence):
        return f"[{', '.join(show(v) for v in value)}]"
    return str(value)


def refuse(name: str, value: Any, expected: str) -> ValueError:
    """The one message shape: `name=value: expected ...` (raise it)."""
    return ValueError(f"{name}={show(value)}: {expected}")


def _or_null(expected: str, optional: bool) -> str:
    return f"{expected}, or null" if optional else expected


def require_int(
    name: str, value: Any, *, at_least: int = 1, note: str = "", optional: bool = False
) -> Any:
    """An integer >= `at_least` (None too with `optional`); `note` explains the number, e.g. ' (1 = grayscale)'."""
    if (optional and value is None) or (is_int(value) and value >= at_least):
        return value
    raise refuse(name, value, _or_null(f"expected an integer >= {at_least}{note}", optional))


def require_token_id(name: str, value: Any, vocab_size: int) -> int:
    """A special token's id (pad, bos, eos): an integer inside the vocabulary."""
    if is_int(value) and 0 <= value < vocab_size:
        return value
    raise refuse(name, value, f"expected a token id inside the vocabulary (0..{vocab_size - 1})")


def check_prefix_tokens(pool: str, class_token: bool | None, dist_token: bool) -> bool:
    """Whether a ViT-style model has a class token (None: it has one when pooling from it), checked
    against the pooling and a DeiT / AST distillation token, which sits beside a class token."""
    class_token = pool == "cls" if class_token is None else require_bool("class_token", class_token)
    if pool == "cls" and not class_token:
        raise refuse("class_token", class_token, "pool='cls' reads the class token (class_token=false goes "
                     "with pool='mean')")
    if require_bool("dist_token", dist_token) and not class_token:
        raise refuse("dist_token", dist_token, "a distillation token needs a class token beside it")
    return class_token


def require_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """A finite number, within [low, high] where given (open ends with low_open / high_open)."""
    if optional and value is None:
        return value
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return value
    if low is not None and high is not None:
        expected = (
            f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        )
    elif low is not None:
        expected = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        expected = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        expected = "a number"
    raise refuse(name, value, _or_null(f"expected {expected}", optional))


def require_fraction(name: str, value: Any) -> Any:
    """A probability that leaves something: dropout rates, in [0, 1)."""
    return require_number(name, value, low=0, high=1, high_open=True)


def require_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise refuse(name, value, "expected true or false")


def require_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if isinstance(value, str) and value in choices:
        return value
    raise refuse(name, value, f"expected one of {', '.join(map(str, choices))}")


def require_size(name: str, value: Any, *, optional: bool = False) -> int | tuple[int, int] | None:
    """A patch size or stride: one integer >= 1 (square), or [height, width] of such integers."""
    if (optional and value is None) or (is_int(value) and value >= 1):
        return value
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(is_int(v) and v >= 1 for v in value)
    ):
        return (value[0], value[1])
    raise refuse(
        name,
        value,
        _or_null("expected an integer >= 1 or [height, width] of integers >= 1", optional),
    )


def require_int_list(name: str, value: Any, *, optional: bool = False) -> list[int] | None:
    """A non-empty list of integers >= 1 (channel widths)."""
    if optional and value is None:
        return None
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(is_int(v) and v >= 1 for v in value)
    ):
        return list(value)
    raise refuse(name, value, _or_null("expected a list of integers >= 1", optional))


def require_range(name: str, value: Any, *, optional: bool = False) -> tuple[float, float] | None:
    """[low, high] with 0 < low <= high (a range of factors)."""
    if optional and value is None:
        return None
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(is_number(v) for v in value)
        and 0 < value[0] <= value[1]
    ):
        return (float(value[0]), float(value[1]))
    raise refuse(name, value, _or_null("expected [low, high] with 0 < low <= high", optional))


__all__ = [
    "is_int",
    "is_number",
    "refuse",
    "require_bool",
    "require_choice",
    "require_fraction",
    "require_int",
    "require_int_list",
    "require_number",
    "require_range",
    "require_size",
    "show",
]
