"""A scenario written as a person writes one: the fields that differ from their defaults, in the
library's order, durations with units (``5us``, ``150ms``, ``2s``) and no float noise.

``explore`` writes its minimal scenarios with it (``scenario_yaml``); ``plain`` is the same content
as numbers (seconds), for JSON. Which fields are durations is read from the models themselves
(a field typed ``units.Duration``, a policy parameter included), so nothing here lists them.
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ats_stress.iommu_actor.units import parse_duration

from .config import EXPECTABLE, Scenario

#: the order the scenario library writes a scenario's sections in (configs/scenarios/*.yaml)
LIBRARY_ORDER = ("name", "description", "seed", "duration", "topology", "hardware", "host", "policy", "workload",
                 "runtime", "chaos", "expect", "explore")
#: a chaos step starts with when and what, then the model's own order
STEP_FIRST = ("at", "fault")
#: significant digits kept: anything beyond is float noise (1.000005 s keeps its 5 us)
DIGITS = 12

_UNITS = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))


class Seconds(float):
    """A duration in a plain dict: written with a unit in YAML, as a number of seconds in JSON."""


def clean(x: float) -> float | int:
    """``x`` without float noise (``4.9999999999999996e-06`` is ``5e-06``); whole numbers as ints."""
    if not math.isfinite(x):
        return x
    y = float(f"{x:.{DIGITS}g}")
    return int(y) if y.is_integer() and abs(y) < 2**53 else y


def duration_text(seconds: float) -> str:
    """``5us``, ``150ms``, ``1.000005s``: the largest unit in which the value is at least 1, with the
    fewest decimals that give the value back (to 12 significant digits)."""
    x = float(clean(seconds))
    if x == 0:
        return "0s"
    unit, scale = next(((u, s) for u, s in _UNITS if abs(x) >= s * (1 - 1e-12)), _UNITS[-1])
    m = x / scale
    for k in range(0, 13):
        text = f"{m:.{k}f}"
        if abs(float(text) - m) <= 1e-9 * abs(m):
            break
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    assert math.isclose(parse_duration(text + unit), x, rel_tol=1e-9), (text, unit, x)
    return text + unit


def _is_duration(tp: Any) -> bool:
    """Whether an annotation is ``units.Duration`` (possibly inside Optional, a tuple or a list)."""
    if get_origin(tp) is not None and hasattr(tp, "__metadata__"):  # Annotated[...]
        if any(getattr(m, "func", None) is parse_duration for m in tp.__metadata__):
            return True
        return _is_duration(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType, tuple, list):
        return any(_is_duration(a) for a in get_args(tp) if a is not Ellipsis and a is not type(None))
    return False


def is_duration_field(field) -> bool:
    return any(getattr(m, "func", None) is parse_duration for m in field.metadata) or _is_duration(field.annotation)


def _value(v: Any, duration: bool) -> Any:
    if isinstance(v, BaseModel):
        return _model(v)
    if isinstance(v, (list, tuple)):
        return [_value(x, duration) for x in v]
    if isinstance(v, dict):
        return {k: _value(x, duration) for k, x in v.items()}
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return Seconds(clean(v)) if duration else clean(v)
    return v


_NO_DEFAULT = object()


@functools.lru_cache(maxsize=None)
def _layout(cls: type[BaseModel], first: tuple[str, ...]) -> tuple[tuple[str, bool, Any], ...]:
    """(name, is a duration, default as written) of each field of ``cls``, ``first`` first."""
    fields = cls.model_fields
    order = [f for f in first if f in fields] + [f for f in fields if f not in first]
    out = []
    for name in order:
        f = fields[name]
        dur = is_duration_field(f)
        default = _NO_DEFAULT
        if not f.is_required() and name not in first:
            d = f.get_default(call_default_factory=True)
            if d is not PydanticUndefined:
                default = _value(d, dur)
        out.append((name, dur, default))
    return tuple(out)


def _model(m: BaseModel, first: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``m`` that differ from their defaults (as written: noise-free), ``first`` first."""
    out: dict[str, Any] = {}
    for name, dur, default in _layout(type(m), first):
        v = _value(getattr(m, name), dur)
        if default is not _NO_DEFAULT and v == default:
            continue
        out[name] = v
    return out


def plain(sc: Scenario) -> dict[str, Any]:
    """The scenario as a person would write it, durations as numbers of seconds (``Seconds``)."""
    out = _model(sc)
    out.pop("explore", None)
    params = sc.policy_params()
    out["policy"] = {"name": sc.policy.name, **_model(params)}
    if sc.chaos or "chaos" in out:
        out["chaos"] = [_model(st, STEP_FIRST) for st in sc.chaos]
    if sc.expect:
        out["expect"] = {name: {k: (Seconds(clean(v)) if EXPECTABLE[name][1] and k in ("min", "max")
                                    else _value(v, k == "at"))
                                for k, v in b.model_dump(exclude_defaults=True).items()}
                         for name, b in sc.expect.items()}
    return {k: out[k] for k in LIBRARY_ORDER if k in out}


def as_json(d: Any) -> Any:
    """``plain``'s dict with every ``Seconds`` a plain number (JSON, explore.json)."""
    if isinstance(d, dict):
        return {k: as_json(v) for k, v in d.items()}
    if isinstance(d, list):
        return [as_json(v) for v in d]
    if isinstance(d, Seconds):
        return clean(float(d))
    return d


class _Flow(dict):
    """A mapping written on one line (a chaos step, a section of scalars)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True))
_Dumper.add_representer(Seconds, lambda d, data: d.represent_scalar("tag:yaml.org,2002:str", duration_text(data)))


def _flows(d: Any, top: bool = True) -> Any:
    """Mappings of scalars (and chaos steps) on one line, as the library writes them."""
    if isinstance(d, dict):
        inner = {k: _flows(v, False) for k, v in d.items()}
        return inner if top else _Flow(inner)
    if isinstance(d, list):
        return [_flows(v, False) for v in d]
    return d


def scenario_yaml(sc: Scenario) -> str:
    """The YAML text of ``plain(sc)``: one line per section of scalars and per chaos step."""
    d = plain(sc)
    d["chaos"] = d.get("chaos", [])
    d = {k: d[k] for k in LIBRARY_ORDER if k in d}
    body = {k: (_flows(v, False) if isinstance(v, dict) and k != "expect" else _flows(v, True)) for k, v in d.items()}
    if "expect" in d:
        body["expect"] = {k: _Flow(_flows(v, True)) for k, v in d["expect"].items()}
    return yaml.dump(body, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110, allow_unicode=True)


def normalized(d: dict) -> dict:
    """Scenario dict ``d`` exactly as its ``scenario_yaml`` reads back (every value as written, no
    noise), dumped as plain data (defaults included, nothing null). explore runs only normalized
    scenarios, so a minimal scenario it writes is, to the bit, the one that ran."""
    written = _as_read(plain(Scenario.model_validate(d)))  # what yaml.safe_load(scenario_yaml(...)) gives
    return Scenario.model_validate(written).model_dump(mode="json", exclude_none=True)


def _as_read(d: Any) -> Any:
    """``plain``'s dict as its YAML reads back: a duration is its text (``5us``), for the model to parse."""
    if isinstance(d, dict):
        return {k: _as_read(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_as_read(v) for v in d]
    if isinstance(d, Seconds):
        return duration_text(d)
    return d
