"""The examples that ship with the package (``examples/`` of the repository: plug-in policies,
explore scenarios), for ``ats-stress examples``: listed, and copied out to be edited."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

#: the repository's examples/, installed as ats_stress/examples (pyproject.toml ships it)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_KINDS = ("*.py", "*.yaml")


def example_files() -> list[Path]:
    """Every example, relative to EXAMPLES, sorted (no __init__.py or caches)."""
    if not EXAMPLES.is_dir():
        return []
    found = {p.relative_to(EXAMPLES) for kind in _KINDS for p in EXAMPLES.rglob(kind)
             if p.name != "__init__.py" and "__pycache__" not in p.parts}
    return sorted(found)


def first_line(path: Path) -> str:
    """What an example is: the first sentence of its docstring (Python) or of the comment it
    opens with (YAML)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        try:
            doc = ast.get_docstring(ast.parse(text)) or ""
        except SyntaxError:
            doc = ""
        para = doc.strip().split("\n\n")[0]
    else:
        lines = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("#").strip())
        para = " ".join(lines)
    para = " ".join(para.split())
    m = re.search(r"\.(\s|$)", para)
    return para[:m.start()] if m else para


def copy_examples(dest: Path) -> tuple[list[Path], list[Path]]:
    """Copy every example under ``dest`` (keeping policies/, explore/): (written, kept). A file
    already there with the same contents counts as written; one with other contents is kept."""
    written, kept = [], []
    for rel in example_files():
        src, out = EXAMPLES / rel, dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and out.read_bytes() != src.read_bytes():
            kept.append(out)
            continue
        shutil.copyfile(src, out)
        written.append(out)
    return written, kept
