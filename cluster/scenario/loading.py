"""Loading a scenario: YAML files (following ``extends:``), ``--set`` overrides, one-paragraph errors.

``load_scenario(path, sets)`` reads a file, applies ``--set a.b=value`` overrides, validates it,
and raises ``ScenarioError`` with a message that names the file, the field path and what is
allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ats_stress.iommu_actor.policy import PolicyError, get_policy

from .chaos import FAULTS
from .config import Scenario
from .fields import ScenarioError
from . import library

# --- loading -----------------------------------------------------------------------------------

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_EXTENDS_DEPTH = 16


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
        data = yaml.safe_load(text)
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
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ScenarioError(f"{path}: extends: must be the path of another scenario file (relative to this one).")
    parent_path = path.parent / parent
    if not parent_path.is_file():
        raise ScenarioError(f"{path}: extends: {parent!r} is not a scenario file (looked for {parent_path}); "
                            "the path is relative to the file that extends it.")
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
        parsed = yaml.safe_load(value) if value.strip() else ""
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


def _loc(loc: tuple) -> str:
    # pydantic puts the union tag in the path (chaos.0.hang.at): drop it
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in FAULTS)]
    return ".".join(parts) or "(top level)"


def format_validation_error(source: str, exc: ValidationError) -> str:
    problems = []
    for e in exc.errors():
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown fault; faults are {', '.join(FAULTS)}"
        elif e["type"] == "union_tag_not_found":
            msg = f"a chaos step needs fault: one of {', '.join(FAULTS)}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        loc = _loc(e["loc"])
        problems.append(msg if loc == "(top level)" else f"{loc}: {msg}")
    return f"{source}: invalid scenario: " + "; ".join(problems) + "."


def scenario_from_dict(data: dict, source: str = "<scenario>") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(format_validation_error(source, exc)) from None


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
    data = apply_sets(data, list(sets or []))
    return scenario_from_dict(data, str(path))
