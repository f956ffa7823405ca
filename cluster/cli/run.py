"""``ats-stress run``, ``validate``, ``scenarios``, ``explain`` and ``observe``: one scenario, and what looks at
its results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ats_stress.iommu_actor.suggest import did_you_mean
from ats_stress.cluster.results.summary import write_summary
from ats_stress.cluster.scenario import ScenarioError, library

from .app import (
    FORMAT_HELP,
    use_format,
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
from .policies import POLICY_FILE_HELP, _plugins


@app.command()
def run(
    scenario: Path = typer.Argument(..., help=SCENARIO_HELP),
    runtime: str = typer.Option("sim", "--runtime", "-r", help="sim (virtual time) or ray (live actors)"),
    policy: Optional[str] = typer.Option(None, "--policy", "-p", help="override policy.name"),
    seed: Optional[int] = typer.Option(None, "--seed", help="override the scenario seed"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for the results (default "
                                       "runs/NAME-POLICY-RUNTIME); a run first removes an earlier run's files there"),
    address: Optional[str] = typer.Option(None, "--address", help="ray runtime: auto, ray://head:10001 or head:6379 (for http://head:8265 use `ray job submit`); none starts a local Ray"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display (a sim run shows a bar only "
                               "when stderr is a terminal)"),
    metrics_bind: str = typer.Option("auto", "--metrics-bind", help="ray runtime: where each actor serves /metrics "
                                     "(targets in DIR/prometheus-targets.json, see `ats-stress observe`): auto "
                                     "(127.0.0.1 on a local Ray, 0.0.0.0 when joining a cluster), an address, or off"),
    policy_file: list[Path] = typer.Option([], "--policy-file", help=POLICY_FILE_HELP),
    format_: str = typer.Option("rich", "--format", help=FORMAT_HELP),
) -> None:
    """Run one scenario; write DIR/summary.json, report.md, its plots and the metrics, and list them."""
    use_format(format_)
    if runtime not in ("sim", "ray"):
        _fail_input(f"--runtime {runtime!r}: {did_you_mean(runtime, ('sim', 'ray'))}the runtimes are sim and ray.")
    sources = _plugins(policy_file)
    sc = _load(scenario, set_, policy, seed)
    bind = _metrics_bind(metrics_bind, address) if runtime == "ray" else None
    out_dir = out or _default_out(sc.name, sc.policy.name, runtime)
    from ats_stress.cluster.results.report import clear_run_outputs, run_outputs, write_run_outputs

    if clear_run_outputs(out_dir) and not quiet:
        err_console.print(f"{out_dir}: removed the previous run's files", highlight=False, soft_wrap=True)
    _sigterm_as_interrupt()
    try:
        if runtime == "sim":
            summary, sampler = _run_sim(sc, quiet)
        else:
            from ats_stress.cluster.results.sampler import LiveSeries
            from ats_stress.cluster.runtime.ray_runtime import RuntimeInputError, run_ray

            sampler = LiveSeries(sc)  # the actors' time series, for the report's plots
            try:
                summary = run_ray(sc, address=address, out_dir=out_dir, quiet=quiet, metrics_bind=bind,
                                  sampler=sampler, plugins=sources)
            except RuntimeInputError as exc:
                _fail_input(str(exc))
    except ScenarioError as exc:
        _fail_input(str(exc))
    write_summary(out_dir, summary)  # summary.json and uaf-trace.jsonl
    write_run_outputs(sc, summary, sampler, out_dir, err_console)
    from ats_stress.cluster.results.text import print_summary

    print_summary(summary, out_console)
    out_console.print("written:", highlight=False)
    for path in run_outputs(out_dir):
        out_console.print(f"  {path}", highlight=False, soft_wrap=True)
    if (summary.get("uaf_trace") or {}).get("stories"):
        out_console.print(f"the story of a UAF: ats-stress explain {out_dir} --uaf 1 (or --sid S)", highlight=False,
                          soft_wrap=True)
    if summary["status"] == "interrupted":
        err_console.print("interrupted: the summary above covers the run up to the interruption", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary["status"] == "failed":
        err_console.print(f"[bold red]the run failed:[/bold red] {summary.get('error')}; the summary so far is "
                          f"written", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)
    raise typer.Exit(EXIT_OK if summary["ok"] else EXIT_EXPECT)


def _metrics_bind(metrics_bind: str, address: Optional[str]) -> Optional[str]:
    bind = {"off": None, "auto": "127.0.0.1" if address is None else "0.0.0.0"}.get(metrics_bind, metrics_bind)
    if bind is not None:
        from ats_stress.cluster.results.metrics import MetricsError, parse_bind

        try:
            parse_bind(bind)
        except MetricsError as exc:
            _fail_input(f"--metrics-bind: {exc}")
    return bind


def _run_sim(sc, quiet: bool):
    """The sim runtime with its sampler and, unless quiet, progress on stderr: a bar of scenario
    seconds on a terminal; elsewhere nothing, or with ATS_STRESS_PROGRESS=1 a line now and then."""
    from ats_stress.cluster.results.sampler import SAMPLE_EVERY, RunSampler
    from ats_stress.cluster.runtime.sim import run_sim

    sampler = RunSampler(sc)  # metrics.om and the report's time series, on scenario time
    lines = os.environ.get("ATS_STRESS_PROGRESS") == "1"
    if quiet or not (err_console.is_terminal or lines):
        return run_sim(sc, progress_every=SAMPLE_EVERY, sample=sampler), sampler

    def now(world) -> str:
        return (f"fenced now={sum(len(o.fenced) for o in world.oracles)} "
                f"uaf={sum(o.uaf_exposures for o in world.oracles)}")

    if not err_console.is_terminal:
        last = [-1e9]

        def line(t, world):
            if t - last[0] >= max(1.0, sc.duration / 20) or t >= sc.duration:
                last[0] = t
                err_console.print(f"  t={t:.2f}/{sc.duration:g} scenario s  {now(world)}", highlight=False)
        return run_sim(sc, progress=line, progress_every=SAMPLE_EVERY, sample=sampler), sampler
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed:.1f}/{task.total:g} scenario s"), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[now]}"),
                   console=err_console)
    task = bar.add_task(f"{sc.name} · {sc.policy.name} · sim", total=sc.duration, now="")
    with bar:
        summary = run_sim(sc, progress=lambda t, world: bar.update(task, completed=t, now=now(world)),
                          progress_every=SAMPLE_EVERY, sample=sampler)
    return summary, sampler


@app.command()
def validate(
    scenario: Path = typer.Argument(..., help=SCENARIO_HELP),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
    policy_file: list[Path] = typer.Option([], "--policy-file", help=POLICY_FILE_HELP),
) -> None:
    """Check a scenario without running it (exit 0 valid, 2 invalid)."""
    _plugins(policy_file)
    sc = _load(scenario, set_)
    out_console.print(f"{library.resolve(scenario)}: valid: {sc.name!r}, {sc.topology.endpoints} endpoints, "
                      f"policy {sc.policy.name}, {len(sc.chaos)} chaos step(s), {sc.duration:g} s",
                      highlight=False, soft_wrap=True)


@app.command()
def scenarios(
    format_: str = typer.Option("rich", "--format", help=FORMAT_HELP),
) -> None:
    """List the built-in scenario library: each name (for run, validate, compare, sweep) and what it shows."""
    use_format(format_)
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
def examples(
    copy: Optional[Path] = typer.Option(None, "--copy", help="copy every example into this directory (made if "
                                        "needed; a file already there with other contents is kept)"),
    format_: str = typer.Option("rich", "--format", help=FORMAT_HELP),
) -> None:
    """List the examples that ship with the package (plug-in policies, explore scenarios); --copy DIR copies them."""
    use_format(format_)
    from ats_stress.cluster.examples import EXAMPLES, copy_examples, example_files, first_line

    files = example_files()
    if not files:
        _fail_input(f"no examples found in {EXAMPLES}: the package was installed without them; reinstall it.")
    if copy is None:
        from rich.table import Table

        t = Table(box=None, show_header=True, pad_edge=False)
        t.add_column("example", no_wrap=True)
        t.add_column("what it is")
        for rel in files:
            t.add_row(str(rel), first_line(EXAMPLES / rel))
        out_console.print(t)
        out_console.print(f"files: {EXAMPLES}  (ats-stress examples --copy DIR copies them; docs/writing-a-policy.md "
                          "walks through the policies)", highlight=False, soft_wrap=True)
        return
    try:
        written, kept = copy_examples(copy)
    except OSError as exc:
        _fail_input(f"--copy {copy}: {exc.strerror or exc} (give a directory you can write to).")
    for path in written:
        out_console.print(f"  {path}", highlight=False, soft_wrap=True)
    for path in kept:
        err_console.print(f"  {path}: kept (a file with other contents is there already)", highlight=False,
                          soft_wrap=True)
    out_console.print(f"copied {len(written)} example(s) to {copy}" + (f", kept {len(kept)}" if kept else "")
                      + f"; try: ats-stress run single-hang --policy-file {copy / 'policies' / 'patient.py'} "
                        "--policy patient-smmu", highlight=False, soft_wrap=True)


@app.command()
def explain(
    run_dir: Path = typer.Argument(..., help="a run's --out directory (its uaf-trace.jsonl)"),
    uaf: Optional[int] = typer.Option(None, "--uaf", help="the Nth story of the trace (1-based; default 1): the "
                                      "run's Nth exposure among the first 1,000"),
    sid: Optional[int] = typer.Option(None, "--sid", help="the first UAF of stream S"),
) -> None:
    """Print the story of one UAF exposure as an ftrace-like timeline.

    The unmap, each CMD_SYNC it waited on and what it returned, the page freed and reallocated,
    the device's DMA."""
    from ats_stress.cluster.results.explain import ExplainError, explain_lines

    if uaf is not None and sid is not None:
        _fail_input("--uaf and --sid pick one story each: give one of them.")
    try:
        lines = explain_lines(run_dir, uaf, sid)
    except ExplainError as exc:
        _fail_input(str(exc))
    for line in lines:
        out_console.print(line, highlight=False, soft_wrap=True, markup=False)


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
