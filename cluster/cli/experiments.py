"""``ats-stress compare`` and ``sweep``: many sim runs of one scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ats_stress.cluster.scenario import ScenarioError
from ats_stress.iommu_actor.policy import PolicyError, get_policy

from .app import _fail_input, _load, _sigterm_as_interrupt, app, out_console


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
    from ats_stress.cluster.experiments.sweep import run_sweep
    from ats_stress.cluster.results.text import print_compare

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
