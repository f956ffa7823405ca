"""``ats-stress run``, ``validate``, ``scenarios`` and ``observe``: one scenario, and what looks at its results."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ats_stress.cluster.results.summary import write_json
from ats_stress.cluster.scenario import ScenarioError, library

from .app import (
    SCENARIO_HELP,
    EXIT_EXPECT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _default_out,
    _fail_input,
    _load,
    _sigterm_as_interrupt,
    app,
    err_console,
    out_console,
)


@app.command()
def run(
    scenario: Path = typer.Argument(..., help=SCENARIO_HELP),
    runtime: str = typer.Option("sim", "--runtime", "-r", help="sim (virtual time) or ray (live actors)"),
    policy: Optional[str] = typer.Option(None, "--policy", "-p", help="override policy.name"),
    seed: Optional[int] = typer.Option(None, "--seed", help="override the scenario seed"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for summary.json (default runs/NAME-POLICY)"),
    address: Optional[str] = typer.Option(None, "--address", help="ray runtime: auto, ray://head:10001 or head:6379 (for http://head:8265 use `ray job submit`); none starts a local Ray"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
    metrics_bind: str = typer.Option("auto", "--metrics-bind", help="ray runtime: where each actor serves /metrics "
                                     "(targets in DIR/prometheus-targets.json, see `ats-stress observe`): auto "
                                     "(127.0.0.1 on a local Ray, 0.0.0.0 when joining a cluster), an address, or off"),
) -> None:
    """Run one scenario and write DIR/summary.json."""
    if runtime not in ("sim", "ray"):
        _fail_input(f"--runtime {runtime!r}: the runtimes are sim and ray.")
    sc = _load(scenario, set_, policy, seed)
    out_dir = out or _default_out(sc.name, sc.policy.name)
    _sigterm_as_interrupt()
    summary = sampler = None
    try:
        if runtime == "sim":
            from ats_stress.cluster.results.sampler import SAMPLE_EVERY, RunSampler
            from ats_stress.cluster.runtime.sim import run_sim

            sampler = RunSampler(sc)  # metrics.om and the report's time series, on scenario time
            summary = run_sim(sc, progress=None if quiet else _sim_progress(sc), progress_every=SAMPLE_EVERY,
                              sample=sampler)
        else:
            from ats_stress.cluster.runtime.ray_runtime import (
                RuntimeInputError,
                run_ray,
            )

            try:
                bind = {"off": None, "auto": "127.0.0.1" if address is None else "0.0.0.0"}.get(metrics_bind, metrics_bind)
                if bind is not None:
                    from ats_stress.cluster.results.metrics import (
                        MetricsError,
                        parse_bind,
                    )

                    try:
                        parse_bind(bind)
                    except MetricsError as exc:
                        _fail_input(f"--metrics-bind: {exc}")
                summary = run_ray(sc, address=address, out_dir=out_dir, quiet=quiet, metrics_bind=bind)
            except RuntimeInputError as exc:
                _fail_input(str(exc))
    except ScenarioError as exc:
        _fail_input(str(exc))
    write_json(out_dir / "summary.json", summary)
    from ats_stress.cluster.results.report import write_run_outputs

    write_run_outputs(sc, summary, sampler, out_dir, out_console, err_console)
    from ats_stress.cluster.results.text import print_summary

    print_summary(summary, out_console)
    out_console.print(f"summary: {out_dir / 'summary.json'}")
    if summary["status"] == "interrupted":
        err_console.print("interrupted: the summary above covers the run up to the interruption", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary["status"] == "failed":
        err_console.print(f"[bold red]the run failed:[/bold red] {summary.get('error')}; the summary so far is "
                          f"written", highlight=False)
        raise typer.Exit(EXIT_FAILED)
    raise typer.Exit(EXIT_OK if summary["ok"] else EXIT_EXPECT)


def _sim_progress(sc):
    if not (sys.stderr.isatty() or os.environ.get("ATS_STRESS_PROGRESS") == "1"):
        return None
    last = [-1e9]

    def progress(t, world):
        if t - last[0] >= max(1.0, sc.duration / 20) or t >= sc.duration:
            last[0] = t
            uaf = sum(o.uaf_exposures for o in world.oracles)
            fenced = sum(len(o.fenced) for o in world.oracles)
            err_console.print(f"  t={t:7.2f}s  events={world.loop.events:>10}  fenced={fenced}  uaf={uaf}",
                              highlight=False)
    return progress


@app.command()
def validate(
    scenario: Path = typer.Argument(..., help=SCENARIO_HELP),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
) -> None:
    """Check a scenario without running it (exit 0 valid, 2 invalid)."""
    sc = _load(scenario, set_)
    out_console.print(f"{library.resolve(scenario)}: valid: {sc.name!r}, {sc.topology.endpoints} endpoints, "
                      f"policy {sc.policy.name}, {len(sc.chaos)} chaos step(s), {sc.duration:g} s",
                      highlight=False, soft_wrap=True)


@app.command()
def scenarios() -> None:
    """List the built-in scenario library: each name (for run, validate, compare, sweep) and what it shows."""
    from rich.table import Table

    t = Table(box=None, show_header=True, pad_edge=False)
    t.add_column("scenario", no_wrap=True)
    t.add_column("what it shows")
    for name in library.names():
        t.add_row(name, library.describe(library.LIBRARY / f"{name}.yaml"))
    out_console.print(t)
    out_console.print(f"files: {library.LIBRARY}  (run one: ats-stress run NAME; copy one to edit it)",
                      highlight=False, soft_wrap=True)


@app.command()
def observe(
    run_dir: Path = typer.Argument(..., help="a run's --out directory (live: its prometheus-targets.json; sim: its metrics.om)"),
    port: int = typer.Option(9090, "--port", help="Prometheus listen port"),
    host: str = typer.Option("127.0.0.1", "--host", help="Prometheus listen address"),
) -> None:
    """Start a local Prometheus on a run's metrics (live targets or a sim run's metrics.om) for Grafana."""
    from ats_stress.cluster.results.observe import ObserveError, instructions, plan
    from ats_stress.cluster.results.observe import run as run_prometheus

    try:
        p = plan(run_dir, port, host)
    except ObserveError as exc:
        _fail_input(str(exc))
    for line in instructions(p, run_dir):
        out_console.print(line, highlight=False, soft_wrap=True)
    code = run_prometheus(p)
    raise typer.Exit(EXIT_INTERRUPTED if code == 130 else (EXIT_OK if code == 0 else EXIT_FAILED))
