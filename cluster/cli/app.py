"""The ``ats-stress`` command line: the Typer app, exit codes and what every command shares.

Exit codes: 0 every expectation held; 1 an expectation was violated (each one is named); 2 bad
input (one paragraph naming the file, the field and what is allowed); 130 interrupted (the summary
gathered so far is written first, marked ``interrupted``); 3 the run failed (likewise written,
marked ``failed``).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ats_stress.cluster.scenario import ScenarioError, load_scenario

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distributed fault-injection testbed for IOMMU ATC-invalidation recovery.")
# the terminal's width; in a file or a pipe, $COLUMNS or 80 (every table fits it: results/text.py)
out_console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_EXPECT, EXIT_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
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
