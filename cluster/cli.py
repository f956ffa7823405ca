"""The ``ats-stress`` command line.

Exit codes: 0 every expectation held; 1 an expectation was violated (each one is named); 2 bad
input (one paragraph naming the file, the field and what is allowed); 130 interrupted (the summary
gathered so far is written first, marked ``interrupted``); 3 the run failed (likewise written,
marked ``failed``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ats_stress.iommu_actor.policy import PolicyError, get_policy, policy_names

from .scenario import ScenarioError, load_scenario
from ats_stress.cluster.results.summary import write_json

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distributed fault-injection testbed for IOMMU ATC-invalidation recovery.")
# wide enough for the compare table when the output is a file or a pipe
out_console = Console(width=None if sys.stdout.isatty() else 220)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 220)

EXIT_OK, EXIT_EXPECT, EXIT_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


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


def _default_out(name: str, policy: str) -> Path:
    return Path("runs") / f"{name}-{policy}".replace(" ", "_")


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
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
            from ats_stress.cluster.runtime.ray_runtime import RuntimeInputError, run_ray

            try:
                bind = {"off": None, "auto": "127.0.0.1" if address is None else "0.0.0.0"}.get(metrics_bind, metrics_bind)
                if bind is not None:
                    from ats_stress.cluster.results.metrics import MetricsError, parse_bind

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
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
) -> None:
    """Check a scenario without running it (exit 0 valid, 2 invalid)."""
    sc = _load(scenario, set_)
    out_console.print(f"{scenario}: valid: {sc.name!r}, {sc.topology.endpoints} endpoints, "
                      f"policy {sc.policy.name}, {len(sc.chaos)} chaos step(s), {sc.duration:g} s", highlight=False)


@app.command()
def policies() -> None:
    """List the recovery policies and their parameters."""
    for name in policy_names():
        cls = get_policy(name)
        out_console.print(f"[bold]{name}[/bold]: {cls.summary}", highlight=False)
        for field, info in cls.Params.model_fields.items():
            desc = f" — {info.description}" if info.description else ""
            out_console.print(f"    {field} (default {info.default!r}){desc}", highlight=False)


@app.command()
def compare(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    policies_: str = typer.Option(",".join(["arm-smmu-v3", "amd-iommu", "intel-vtd", "quarantine", "iommu-core"]),
                                  "--policies", help="comma-separated policy names"),
    seeds: int = typer.Option(1, "--seeds", min=1, max=1000, help="seeds per policy (scenario seed, +1, ...)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for compare.json and compare.png"),
) -> None:
    """Run the same scenario and seeds under each policy and print one table."""
    names = [p.strip() for p in policies_.split(",") if p.strip()]
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

    report = run_compare(sc, names, seeds, out_dir)
    print_compare(report["rows"], out_console, title=f"{sc.name} · {seeds} seed(s) per policy · sim runtime")
    out_console.print(f"written: {out_dir / 'compare.json'}, {out_dir / 'compare.png'}")


@app.command()
def sweep(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    param: list[str] = typer.Option(..., "--param", help="an axis: key.path=v1,v2,... (repeatable)"),
    seeds: int = typer.Option(1, "--seeds", min=1, max=1000, help="seeds per point (scenario seed, +1, ...)"),
    runtime: str = typer.Option("sim", "--runtime", "-r", help="sim (points in parallel processes) or ray (points one after another, live)"),
    set_: list[str] = typer.Option([], "--set", help="override a field for every point: key.path=value"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for sweep.json and sweep.png"),
    address: Optional[str] = typer.Option(None, "--address", help="ray runtime: the cluster to join (default: an embedded local Ray)"),
) -> None:
    """Run a grid over scenario parameters and seeds; print a table, write JSON and a chart."""
    if runtime not in ("sim", "ray"):
        _fail_input(f"--runtime {runtime!r}: the runtimes are sim and ray.")
    sc = _load(scenario, set_)
    out_dir = out or Path("runs") / f"sweep-{sc.name}".replace(" ", "_")
    from ats_stress.cluster.results.text import print_compare
    from ats_stress.cluster.experiments.sweep import run_sweep

    _sigterm_as_interrupt()
    try:
        if runtime == "ray":
            from ats_stress.cluster.runtime.ray_runtime import RuntimeInputError

            try:
                report = run_sweep(sc, param, seeds, out_dir, source=str(scenario), runtime="ray", address=address)
            except RuntimeInputError as exc:
                _fail_input(str(exc))
        else:
            report = run_sweep(sc, param, seeds, out_dir, source=str(scenario))
    except ScenarioError as exc:
        _fail_input(str(exc))
    print_compare(report["rows"], out_console, title=f"{sc.name} · sweep · {seeds} seed(s) per point · {runtime} runtime")
    out_console.print(f"written: {out_dir / 'sweep.json'}, {out_dir / 'sweep.png'}")


@app.command()
def observe(
    run_dir: Path = typer.Argument(..., help="a run's --out directory (live: its prometheus-targets.json; sim: its metrics.om)"),
    port: int = typer.Option(9090, "--port", help="Prometheus listen port"),
    host: str = typer.Option("127.0.0.1", "--host", help="Prometheus listen address"),
) -> None:
    """Start a local Prometheus on a run's metrics (live targets or a sim run's metrics.om) for Grafana."""
    from ats_stress.cluster.results.observe import ObserveError, instructions, plan, run as run_prometheus

    try:
        p = plan(run_dir, port, host)
    except ObserveError as exc:
        _fail_input(str(exc))
    for line in instructions(p, run_dir):
        out_console.print(line, highlight=False, soft_wrap=True)
    code = run_prometheus(p)
    raise typer.Exit(EXIT_INTERRUPTED if code == 130 else (EXIT_OK if code == 0 else EXIT_FAILED))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
