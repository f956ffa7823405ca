"""Durations and rates as scenario files write them: ``5us``, ``100ms``, ``1s``, ``2m`` or a number of seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|min|m|h)?\s*$")

#: Anything longer than a day of scenario time is a typo, not a study.
MAX_DURATION_S = 86_400.0


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string with a unit; raises ValueError with what is allowed."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '5us', '100ms', '1s', '2m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration: use a number of seconds or a number with "
                             "one of ns, us, ms, s, m, h (for example '100ms')")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError("a duration is a number of seconds or a string such as '5us', '100ms', '1s', '2m'")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be finite")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"a duration above {MAX_DURATION_S:.0f} s (one day) is not allowed")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human text for a duration in seconds: 1.5ms, 60s."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.4g}{unit}"
    return f"{seconds / 1e-9:.4g}ns"


#: A duration field (>= 0) in a pydantic model.
Duration = Annotated[float, BeforeValidator(parse_duration)]
Duration.__doc__ = """A duration in a policy's ``Params`` (or any pydantic model): a float of seconds.

    class Params(PolicyParams):
        sync_timeout: Duration = 1.0

The scenario may write it as a number of seconds (``0.1``) or with a unit (``100ms``, ``5us``,
``1s``, ``2m``; ns, us, ms, s, m, h); the policy always gets seconds (``self.params.sync_timeout
== 0.1``). Negative, infinite and longer than a day are errors (exit 2 naming the field). A
``Duration`` field is also what ``ats-stress explore`` reads as one of the policy's clocks, and
what ``sweep --param policy.sync_timeout=50ms,1s`` draws on a log axis."""
