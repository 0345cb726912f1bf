"""Integer query parameters, read the same way on every route.

``int()`` takes more than a client should send (" 1", "1_0", non-ASCII digits, and costs
time on a digit string of thousands of characters): a parameter is ASCII digits only, with an
optional sign, at most 20 of them, within the route's bounds; else a 400 naming it.
"""

from __future__ import annotations

import re

from viewer_api.problems import BadRequest

_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def integer(name: str, value: str, low: int, high: int) -> int:
    """*value* of parameter *name* as an integer from *low* to *high*; BadRequest otherwise."""
    if not _INTEGER.fullmatch(value):
        raise BadRequest(f"{name} must be an integer from {low} to {high}, not {value[:32]!r}")
    number = int(value)
    if not low <= number <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return number
