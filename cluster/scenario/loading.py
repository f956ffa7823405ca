"""Loading a scenario: YAML files (following ``extends:``), ``--set`` overrides, one-paragraph errors.

``load_scenario(path, sets)`` reads a file, applies ``--set a.b=value`` overrides, validates it,
and raises ``ScenarioError`` with a message that names the file, the field path and what is
allowed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from ats_stress.iommu_actor.policy import PolicyError, get_policy
from ats_stress.iommu_actor.suggest import did_you_mean

from .chaos import FAULTS
from .config import PROBLEMS_SEP, Scenario
from .fields import ScenarioError
from . import library

# --- loading -----------------------------------------------------------------------------------

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_EXTENDS_DEPTH = 16
#: a scenario nests a few levels (chaos.0.latency.median); deeper is a mistake or an attack
MAX_NESTING = 32


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, again: int):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # <<: merged keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: the constructor says so below
                    pass
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str):
    """``yaml.safe_load`` that refuses duplicate keys and deep nesting with a ScenarioError
    naming ``where`` (a file, or a --set option)."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        lines = f" (lines {exc.first} and {exc.again})" if exc.first != exc.again else ""
        raise ScenarioError(f"{where}: the key {exc.key!r} appears twice in one mapping{lines}; YAML would "
                            "silently keep the last one. Remove one of them.") from None
    except RecursionError:
        raise ScenarioError(f"{where}: nests lists or mappings hundreds of levels deep; a scenario nests "
                            f"at most {MAX_NESTING} levels.") from None
    _check_nesting(data, where)
    return data


def _check_nesting(data: Any, where: str) -> None:
    stack = [(data, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_NESTING:
            raise ScenarioError(f"{where}: nests more than {MAX_NESTING} levels deep (at "
                                f"{path[:60]}{'...' if len(path) > 60 else ''}); a scenario nests a few levels.")
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1, f"{path}.{k}" if path else str(k)))


def _read_yaml(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file. Give the path of a scenario YAML file or a name "
                            "from the built-in library (`ats-stress scenarios`).") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a directory, not a scenario file.") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read ({exc.strerror}).") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(f"{path}: {len(raw)} bytes is too large for a scenario (limit {MAX_FILE_BYTES}).")
    if b"\x00" in raw:
        raise ScenarioError(f"{path}: is a binary file, not a YAML scenario.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: is not UTF-8 text; a scenario is a YAML file.") from None
    try:
        data = parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{path}: is not valid YAML{where}: {problem}.") from None
    if data is None:
        raise ScenarioError(f"{path}: is empty; a scenario needs at least name and duration.")
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping (name: ..., duration: ...), "
                            f"not a {type(data).__name__}.")
    return data


def _anchor_trace(data: dict, directory: Path) -> dict:
    """A relative ``workload.trace`` is relative to the file that gives it (or, from --set, to the
    working directory): made absolute here, before files merge."""
    w = data.get("workload")
    if isinstance(w, dict) and isinstance(w.get("trace"), str) and w["trace"]:
        p = Path(w["trace"]).expanduser()
        if not p.is_absolute():
            w["trace"] = str((directory / p).resolve())
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in chain + (resolved,))
        raise ScenarioError(f"{chain[0]}: extends: forms a cycle ({cycle}).")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise ScenarioError(f"{chain[0]}: extends: nests deeper than {MAX_EXTENDS_DEPTH} files.")
    data = _anchor_trace(_read_yaml(path), path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ScenarioError(f"{path}: extends: must be the path of another scenario file (relative to this one) "
                            "or the name of a scenario of the built-in library.")
    parent_path = path.parent / parent
    if not parent_path.is_file():
        stem = parent[:-5] if parent.endswith(".yaml") else parent
        in_library = library.LIBRARY / f"{stem}.yaml"
        if "/" in parent or not stem or not in_library.is_file():
            raise ScenarioError(f"{path}: extends: {parent!r} is neither a scenario file (looked for {parent_path}; "
                                "the path is relative to the file that extends it) nor a scenario of the built-in "
                                f"library ({did_you_mean(stem, library.names())}{', '.join(library.names())}).")
        parent_path = in_library  # a library name: `extends: single-hang`
    base = _load_tree(parent_path, chain + (resolved,))
    return _merge(base, data)


def _parse_set(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ScenarioError(f"--set {item!r}: write --set key.path=value, for example --set policy.sync_timeout=100ms.")
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ScenarioError(f"--set {item!r}: the key path {key!r} has an empty part.")
    try:
        parsed = parse_yaml(value, f"--set {item!r}") if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_sets(data: dict, sets: list[str]) -> dict:
    for item in sets:
        parts, value = _parse_set(item)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ScenarioError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not an index of the list.")
                node = node[int(part)]
            else:
                if not isinstance(node, dict):
                    raise ScenarioError(f"--set {item!r}: {'.'.join(parts[:i])} is not a mapping.")
                node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ScenarioError(f"--set {item!r}: {last} is not an index of the list.")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ScenarioError(f"--set {item!r}: {'.'.join(parts[:-1])} is not a mapping.")
    return data


def _loc_parts(loc: tuple) -> list[str]:
    # pydantic puts the union tag in the path (chaos.0.hang.at): drop it
    return [str(p) for p in loc if not (isinstance(p, str) and p in FAULTS)]


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation can hold (through Optional, Union, list, dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def allowed_fields(loc: tuple) -> list[str]:
    """The fields allowed beside the unknown one at ``loc`` (a pydantic error location)."""
    models: list[type[BaseModel]] = [Scenario]
    for part in loc[:-1]:
        fields = [m.model_fields[part].annotation for m in models if isinstance(part, str) and part in m.model_fields]
        if fields:
            models = [m for a in fields for m in _models(a)]
        elif isinstance(part, str):  # a union tag (the chaos step's fault) or a mapping key
            tagged = [m for m in models if any(part in get_args(f.annotation) for f in m.model_fields.values())]
            models = tagged or models
    names: list[str] = []
    for m in models:
        names += [n for n in m.model_fields if n not in names]
    return names


def _problem(e: dict) -> tuple[list[str], str]:
    """(field path, what is wrong) of one pydantic error."""
    parts = _loc_parts(e["loc"])
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    msg = msg.replace("Extra inputs are not permitted", "unknown field")  # e.g. a policy's parameters
    if e["type"] == "extra_forbidden":
        field = ".".join(parts) or "?"
        allowed = allowed_fields(e["loc"])
        return [], f"unknown field {field} ({did_you_mean(parts[-1] if parts else field, allowed)}allowed: {', '.join(allowed)})"
    if e["type"] == "union_tag_invalid":
        tag = (e.get("ctx") or {}).get("tag")
        msg = f"unknown fault {tag!r}; {did_you_mean(tag, FAULTS)}faults are {', '.join(FAULTS)}"
    elif e["type"] == "union_tag_not_found":
        msg = f"a chaos step needs fault: one of {', '.join(FAULTS)}"
    elif e["type"] == "missing":
        msg = "required field is missing"
    if not parts:  # a check of the whole scenario names its field in the message (chaos.0.at: ...)
        head = msg.split(":", 1)[0]
        if head and " " not in head:
            return head.split("."), msg
    return parts, (f"{'.'.join(parts)}: {msg}" if parts else msg)


def _from_set(path: list[str], sets: list[tuple[list[str], str]]) -> tuple[str | None, bool]:
    """(the last --set option that wrote ``path`` or a field around it, whose problem it is alone;
    else the last that wrote a field inside ``path``, which a check of the whole section may share
    with the file; else None)."""
    inside = None
    for parts, item in reversed(sets):
        if not path:
            continue
        if parts[:len(path)] == path[:len(parts)] and len(parts) <= len(path):
            return item, True
        if inside is None and parts[:len(path)] == path:
            inside = item
    return inside, False


def _errors(errors: list[dict]) -> list[dict]:
    """Pydantic's errors, a check across fields that found several problems split into one each."""
    out = []
    for e in errors:
        msg = e["msg"]
        if e["type"] == "value_error" and PROBLEMS_SEP in msg:
            head = "Value error, " if msg.startswith("Value error, ") else ""
            out += [{**e, "msg": head + part} for part in msg[len(head):].split(PROBLEMS_SEP)]
        else:
            out.append(e)
    return out


#: sections the checks across fields do not read: one that fails on its own is left at its default
#: for a second look at the rest (a bad chaos step is left out alone)
_INDEPENDENT = ("name", "description", "seed", "hardware", "runtime", "explore", "expect", "chaos", "policy")


def all_errors(data: Any) -> list[dict]:
    """Every problem of ``data`` in one pass. Pydantic checks the fields first and runs the checks
    across them (``Scenario._steps_fit``: endpoints in range, the policy and its parameters, ...)
    only when every field passed; so when fields fail, the failing sections that those checks do
    not read are left out and the checks are run on the rest, so that a misspelled policy is said
    beside a bad chaos step, not on the next run."""
    try:
        Scenario.model_validate(data)
        return []
    except ValidationError as exc:
        errors = _errors(exc.errors())
    if not isinstance(data, dict) or not all(e["loc"] for e in errors):
        return errors
    failing = {str(e["loc"][0]) for e in errors}
    if not failing <= set(_INDEPENDENT):
        return errors  # the checks read a section that failed: they would judge against its default
    pruned = {k: v for k, v in data.items() if k not in failing - {"chaos"}}
    kept = list(range(len(data.get("chaos") or []))) if isinstance(data.get("chaos"), list) else []
    if "chaos" in failing and kept:
        bad = {e["loc"][1] for e in errors if e["loc"][0] == "chaos" and len(e["loc"]) > 1}
        kept = [i for i in kept if i not in bad]
        pruned["chaos"] = [data["chaos"][i] for i in kept]
    elif "chaos" in failing:
        pruned.pop("chaos", None)
    try:
        Scenario.model_validate(pruned)
    except ValidationError as again:
        for e in _errors(again.errors()):
            if e["loc"]:
                continue  # a field of a section left at its default: said already, or not a problem
            msg = e["msg"]
            m = re.match(r"(Value error, )?chaos\.(\d+)", msg)
            if m and int(m.group(2)) < len(kept):  # the step's number in the file
                start = m.start(2)
                msg = msg[:start] + str(kept[int(m.group(2))]) + msg[m.end(2):]
            errors.append({**e, "msg": msg})
    return errors


def format_validation_error(source: str, exc: ValidationError | list[dict], sets: list[tuple[list[str], str]] = (),
                            file_problems: set[tuple[str, ...]] | None = None) -> str:
    """One paragraph: each problem with its field path, blamed on the --set option that wrote the
    field, else on the file. A check of a whole section with a --set inside it is the option's
    when the file alone passes it (``file_problems``: the paths the file alone fails), else both's."""
    in_file, by_set = [], []
    for e in (exc if isinstance(exc, list) else _errors(exc.errors())):
        path, text = _problem(e)
        item, alone = _from_set(path, list(sets))
        if item is not None and not alone and file_problems is not None and tuple(path) not in file_problems:
            alone = True
        if item is None:
            in_file.append(text)
        elif alone:
            by_set.append(f"--set {item!r}: {text}")
        else:
            in_file.append(f"{text} (with --set {item!r})")
    parts = [f"{source}: invalid scenario: " + "; ".join(in_file)] if in_file else []
    return "; ".join(parts + by_set) + "."


def scenario_from_dict(data: dict, source: str = "<scenario>", sets: list[str] = (),
                       before_sets: dict | None = None) -> Scenario:
    """Validate ``data`` (read from ``source``, then changed by the ``--set`` options ``sets``;
    ``before_sets``: the data as the file gave it, to tell whose a problem is)."""
    try:
        return Scenario.model_validate(data)
    except ValidationError:
        errors = all_errors(data)
        parsed = [(_parse_set(item)[0], item) for item in sets]
        file_problems = None
        if before_sets is not None:
            file_problems = {tuple(_problem(e)[0]) for e in all_errors(before_sets)}
        raise ScenarioError(format_validation_error(source, errors, parsed, file_problems)) from None


def load_scenario(path: str | Path, sets: list[str] | None = None, *, policy: str | None = None,
                  seed: int | None = None) -> Scenario:
    """Read, extend, override and validate a scenario; ScenarioError on anything wrong.

    ``path`` is a file or the name of a scenario of the built-in library (``library.resolve``).
    ``policy`` replaces policy.name and keeps only the parameters the new policy has (so a
    scenario written for one policy can be replayed under another); ``seed`` replaces the seed.
    ``sets`` (``key.path=value``) apply last.
    """
    path = library.resolve(path)
    data = _load_tree(path, ())
    if policy is not None:
        try:
            known = get_policy(policy).Params.model_fields
        except PolicyError as exc:
            raise ScenarioError(f"--policy: {exc}.") from None
        old = data.get("policy") if isinstance(data.get("policy"), dict) else {}
        data["policy"] = {"name": policy, **{k: v for k, v in old.items() if k in known}}
    if seed is not None:
        data["seed"] = seed
    before = copy.deepcopy(data) if sets else None
    data = _anchor_trace(apply_sets(data, list(sets or [])), Path.cwd())
    sc = scenario_from_dict(data, str(path), list(sets or []), before)
    if sc.workload.trace is not None:  # the trace file itself: read through once, exit 2 if it is bad
        from .trace import build_spec

        build_spec(sc)
    return sc
