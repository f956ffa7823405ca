"""``ats-stress compare`` and ``sweep``: many sim runs of one scenario, fanned out over Ray."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from ats_stress.cluster.scenario import ScenarioError
from ats_stress.iommu_actor.policy import PolicyError, get_policy, policy_names

from .app import EXIT_FAILED, EXIT_INTERRUPTED, _fail_input, _load, _sigterm_as_interrupt, app, err_console, out_console
from .policies import POLICY_FILE_HELP, _plugins, _refuse_live_plugin
from .progress import RunProgress

WORKERS_HELP = ("sim runs in flight at once (default: every CPU of the Ray cluster); 1 with no --address runs them "
                "in this process, without Ray")
ADDRESS_HELP = ("the Ray cluster to fan the sim runs out to: auto, ray://HEAD:10001 or HEAD:6379 (default: an "
                "embedded local Ray)")


@contextmanager
def fanout_errors():
    """A bad --address or a dead cluster is bad input (exit 2); a run that could not be carried out exits 3."""
    from ats_stress.cluster.experiments.pool import PoolError
    from ats_stress.cluster.runtime.connect import RuntimeInputError

    try:
        yield
    except RuntimeInputError as exc:
        _fail_input(str(exc))
    except ScenarioError as exc:
        _fail_input(str(exc))
    except PoolError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)


def print_written(files: list[str]) -> None:
    out_console.print("written:", highlight=False)
    for f in files:
        out_console.print(f"  {f}", highlight=False, soft_wrap=True)


def finish(report: dict, what: str) -> None:
    print_written(report["files"])
    if report.get("interrupted"):
        err_console.print(f"interrupted: {what} covers the {len(report['runs'])} run(s) finished before it",
                          highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command()
def compare(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    policies_: Optional[str] = typer.Option(None, "--policies", help="comma-separated policy names (default: every "
                                            "policy, plug-ins included)"),
    seeds: int = typer.Option(1, "--seeds", min=1, max=1000, help="seeds per policy (scenario seed, +1, ...)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for compare.json and the charts"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    policy_file: list[Path] = typer.Option([], "--policy-file", help=POLICY_FILE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Run the same scenario and seeds under each policy and print one table."""
    sources = _plugins(policy_file)
    names = policy_names() if policies_ is None else [p.strip() for p in policies_.split(",") if p.strip()]
    if not names:
        _fail_input("--policies: give at least one policy name.")
    for n in names:
        try:
            get_policy(n)
        except PolicyError as exc:
            _fail_input(f"--policies: {exc}")
    sc = _load(scenario, set_)
    out_dir = out or Path("runs") / f"compare-{sc.name}".replace(" ", "_")
    from ats_stress.cluster.experiments.compare import run_compare
    from ats_stress.cluster.results.text import print_compare

    _sigterm_as_interrupt()
    with fanout_errors(), RunProgress("compare", len(names) * seeds, quiet) as bar:
        report = run_compare(sc, names, seeds, out_dir, workers=workers, address=address, sources=sources,
                             on_result=lambda r: bar.advance())
    print_compare(report["rows"], out_console, title=f"{sc.name} · {seeds} seed(s) per policy · sim runtime")
    finish(report, "compare.json")


@app.command()
def sweep(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    param: list[str] = typer.Option(..., "--param", help="an axis: key.path=v1,v2,... (repeatable)"),
    seeds: int = typer.Option(1, "--seeds", min=1, max=1000, help="seeds per point (scenario seed, +1, ...)"),
    runtime: str = typer.Option("sim", "--runtime", "-r", help="sim (points as Ray tasks, in parallel) or ray "
                                "(points one after another, live)"),
    set_: list[str] = typer.Option([], "--set", help="override a field for every point: key.path=value"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for sweep.json and sweep.png"),
    address: Optional[str] = typer.Option(None, "--address", help="the Ray cluster to join (default: an embedded "
                                          "local Ray): sim points fan out to it, ray points run live on it"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="sim runtime: " + WORKERS_HELP),
    policy_file: list[Path] = typer.Option([], "--policy-file", help=POLICY_FILE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Run a grid over scenario parameters and seeds; print a table, write JSON and a chart."""
    if runtime not in ("sim", "ray"):
        _fail_input(f"--runtime {runtime!r}: the runtimes are sim and ray.")
    sources = _plugins(policy_file)
    sc = _load(scenario, set_)
    if runtime == "ray":
        _refuse_live_plugin(sc.policy.name)
    out_dir = out or Path("runs") / f"sweep-{sc.name}".replace(" ", "_")
    from ats_stress.cluster.experiments.sweep import grid, run_sweep
    from ats_stress.cluster.results.text import print_compare

    _sigterm_as_interrupt()
    with fanout_errors():
        total = len(grid(sc, param, seeds, str(scenario)))
        with RunProgress("sweep", total, quiet or runtime == "ray") as bar:
            report = run_sweep(sc, param, seeds, out_dir, source=str(scenario), runtime=runtime, address=address,
                               workers=workers, sources=sources, on_result=lambda r: bar.advance())
    print_compare(report["rows"], out_console, title=f"{sc.name} · sweep · {seeds} seed(s) per point · {runtime} runtime")
    finish(report, "sweep.json")
