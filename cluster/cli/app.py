"""The ``ats-stress`` command line: the Typer app, exit codes and what every command shares.

Exit codes: 0 every expectation held; 1 an expectation was violated (each one is named); 2 bad
input (one paragraph naming the file, the field and what is allowed); 130 interrupted (the summary
gathered so far is written first, marked ``interrupted``); 3 the run failed (likewise written,
marked ``failed``).
"""

from __future__ import annotations

import re
import signal
import sys
import unicodedata
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ats_stress.iommu_actor.suggest import did_you_mean
from ats_stress.cluster.scenario import ScenarioError, load_scenario

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distributed fault-injection testbed for IOMMU ATC-invalidation recovery.")
# the terminal's width; in a file or a pipe, $COLUMNS or 80 (every table fits it: results/text.py)
out_console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_EXPECT, EXIT_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

FORMAT_HELP = "rich: tables with boxes and colour (the default); text: plain ASCII, no colour (for mail)"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_TRAILING = re.compile(r"[ \t]+\n")
_ASCII = {"·": "-", "…": "...", "µ": "u", "×": "x", "≤": "<=", "≥": ">=", "→": "->", "←": "<-", "—": "--",
          "–": "-", "•": "*", "±": "+/-", "≈": "~", "“": '"', "”": '"', "‘": "'", "’": "'", "\u00a0": " "}


def ascii_text(text: str) -> str:
    """``text`` in plain ASCII: no colour codes, box-drawing lines as - | +, other symbols spelled."""
    text = _ANSI.sub("", text)
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif "\u2500" <= ch <= "\u257f":  # box drawing: lines and junctions
            name = unicodedata.name(ch, "")
            out.append("-" if "HORIZONTAL" in name and "VERTICAL" not in name and "DOWN" not in name
                       and "UP" not in name else "|" if "VERTICAL" in name and "HORIZONTAL" not in name
                       and "LEFT" not in name and "RIGHT" not in name else "+")
        elif ch in _ASCII:
            out.append(_ASCII[ch])
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(plain or "?")
    return "".join(out)


class _AsciiOut:
    """stdout, as plain ASCII: what ``--format text`` prints through."""

    def write(self, text: str) -> int:
        return sys.stdout.write(_TRAILING.sub("\n", ascii_text(text)))  # no padding at the end of a line

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return False


def use_format(fmt: str) -> None:
    """``--format``: rich (stdout as it is) or text (plain ASCII tables, no colour)."""
    if fmt not in ("rich", "text"):
        _fail_input(f"--format {fmt!r}: {did_you_mean(fmt, ('rich', 'text'))}the formats are rich (tables with boxes and colour) and text (plain "
                    "ASCII, for mail).")
    out_console.file = _AsciiOut() if fmt == "text" else None  # None: sys.stdout, whatever it is now
#: what every command's SCENARIO argument takes (``library.resolve``, through ``load_scenario``)
SCENARIO_HELP = "scenario YAML file, or the name of one in the built-in library (`ats-stress scenarios`)"


def _fail_input(msg: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)


def _sigterm_as_interrupt() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests): leave signals alone
        pass


def _load(scenario: Path, sets: list[str], policy: Optional[str] = None, seed: Optional[int] = None):
    try:
        return load_scenario(scenario, list(sets), policy=policy, seed=seed)
    except ScenarioError as exc:
        _fail_input(str(exc))


def _default_out(name: str, policy: str, runtime: str) -> Path:
    """runs/NAME-POLICY-RUNTIME: a sim run and a live run of one scenario keep their own results."""
    return Path("runs") / f"{name}-{policy}-{runtime}".replace(" ", "_")


def main() -> None:
    """The console script (the command modules registered themselves when ``cli`` was imported)."""
    app()
