"""``did you mean ...?`` for an unknown name: the closest known ones (difflib), said beside the list
of every known name that the error prints anyway. Plain Python, used by the model and the CLI."""

from __future__ import annotations

import difflib
from typing import Iterable


def close_names(word: object, choices: Iterable[object], n: int = 2) -> list[str]:
    """The known names closest to ``word`` (at most ``n``; none when nothing is close)."""
    text = str(word)
    names = [str(c) for c in choices]
    found = difflib.get_close_matches(text, names, n=n, cutoff=0.6)
    if not found:  # a different case, or a prefix ("quarantine" for "quar")
        low = text.lower()
        found = [c for c in names if c.lower() == low] or (
            [c for c in names if c.lower().startswith(low)][:n] if len(low) >= 3 else [])
    return found


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """``"did you mean 'x'? "`` (or ``'x' or 'y'``), or "" when nothing is close: put it before the list."""
    found = close_names(word, choices)
    if not found:
        return ""
    return "did you mean " + " or ".join(repr(f) for f in found) + "? "
