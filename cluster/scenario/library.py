"""The built-in scenario library (configs/scenarios/, shipped in the wheel) and scenario names.

``resolve("single-hang")`` is the library's single-hang.yaml; an existing path is itself.
``load_scenario`` resolves every scenario argument this way, so every command takes either.
``describe(path)`` is the first sentence of a scenario's opening comment, for ``ats-stress scenarios``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ats_stress.iommu_actor.suggest import did_you_mean

from .fields import ScenarioError

#: the library: configs/scenarios/ of the ats_stress package (the repository root, or site-packages)
LIBRARY = Path(__file__).resolve().parents[2] / "configs" / "scenarios"
#: a description is cut (at a word) to this many characters
LONGEST = 200


def names() -> list[str]:
    """The library's scenario names, sorted."""
    return sorted(p.stem for p in LIBRARY.glob("*.yaml"))


def resolve(scenario: str | Path) -> Path:
    """An existing path as given; else a bare name (``single-hang`` or ``single-hang.yaml``) of the
    library; else ScenarioError naming both places it looked."""
    path = Path(scenario)
    if path.exists():
        return path
    text = str(scenario)
    if "/" not in text and "\\" not in text:
        stem = text[:-5] if text.endswith(".yaml") else text[:-4] if text.endswith(".yml") else text
        candidate = LIBRARY / f"{stem}.yaml"
        if stem and candidate.is_file():
            return candidate
    known = ", ".join(names()) or "none: the library is not installed"
    stem = text[:-5] if text.endswith(".yaml") else text
    raise ScenarioError(f"{text}: no such file, and no scenario of that name in the built-in library "
                        f"({did_you_mean(Path(stem).name, names())}{known}). Give the path of a scenario YAML file or a library name "
                        "(`ats-stress scenarios` lists them with what each shows).")


def describe(path: Path) -> str:
    """The first sentence of the comment a scenario opens with ("" when it has none)."""
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(x for x in lines if x)
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    first = m.group(1) if m else text
    if len(first) > LONGEST:
        first = first[:LONGEST].rsplit(" ", 1)[0] + " ..."
    return first
