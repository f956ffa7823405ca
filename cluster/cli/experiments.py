"""``ats-stress compare``, ``sweep`` and ``explore``: many sim runs of one scenario, fanned out over Ray."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from ats_stress.iommu_actor.suggest import did_you_mean
from ats_stress.cluster.scenario import ScenarioError
from ats_stress.iommu_actor.policy import PolicyError, get_policy, policy_names

from .app import (
    FORMAT_HELP,
    use_format,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    SCENARIO_HELP,
    _fail_input,
    _load,
    _sigterm_as_interrupt,
    app,
    err_console,
    out_console,
)
from .policies import POLICY_FILE_HELP, _plugins
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
    """The files, then why the runs are not all there or not all sound: interrupted (exit 130), the
    pool failed (3), or runs failed with an error, whose figures in the table mean nothing (3)."""
    print_written(report["files"])
    if report.get("interrupted"):
        err_console.print(f"interrupted: {what} covers the {len(report['runs'])} run(s) finished before it",
                          highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    problems = []
    if report.get("error"):
        problems.append(f"the runs stopped: {report['error']} {what} covers the {len(report['runs'])} run(s) "
                        "finished before it.")
    if report.get("failed_runs"):
        problems.append(f"{report['failed_runs']} run(s) failed with an error and count for nothing in the "
                        f"table (first: {report['first_error']}).")
    exit_if_failed(problems)


def exit_if_failed(problems: list[str]) -> None:
    """After the files are written: one paragraph of what went wrong, exit 3 (nothing: return)."""
    if problems:
        err_console.print("[bold red]error:[/bold red] " + " ".join(problems), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)


def out_dir_for(out: Optional[Path], default: str) -> Path:
    """--out, or runs/DEFAULT; bad input (exit 2) when it cannot be a directory, found before any run."""
    d = out or Path("runs") / default.replace(" ", "_")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail_input(f"--out {d}: cannot be used as the output directory ({exc.strerror or exc}).")
    return d


@app.command()
def compare(
    scenario: Path = typer.Argument(..., help=SCENARIO_HELP),
    policies_: Optional[str] = typer.Option(None, "--policies", help="comma-separated policies, each a name or a "
                                            "variant NAME:key=value[:key=value...], for example "
                                            "quarantine:version=v1,arm-smmu-v3 (default: every policy, plug-ins "
                                            "included)"),
    seeds: int = typer.Option(1, "--seeds", min=1, max=1000, help="seeds per policy (scenario seed, +1, ...)"),
    flush: Optional[str] = typer.Option(None, "--flush", help="strict, lazy or default: host.flush for every policy "
                                        "(default: the scenario's, which is each policy's Kconfig default unless it "
                                        "says otherwise)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for compare.json and the charts"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    policy_file: list[Path] = typer.Option([], "--policy-file", help=POLICY_FILE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    format_: str = typer.Option("rich", "--format", help=FORMAT_HELP),
) -> None:
    """Run the same scenario and seeds under each policy (or variant of one) and print one table."""
    use_format(format_)
    from ats_stress.cluster.experiments.compare import (PolicyVariant, check_variant, compare_title, parse_policies,
                                                        run_compare, with_flush)
    from ats_stress.cluster.results.text import print_compare, print_verdicts

    sources = _plugins(policy_file)
    try:
        names = ([PolicyVariant(n) for n in policy_names()] if policies_ is None
                 else parse_policies(policies_))  # a repeat once
    except ScenarioError as exc:
        _fail_input(str(exc))
    if not names:
        _fail_input("--policies: give at least one policy name.")
    for v in names:
        try:
            get_policy(v.name)
        except PolicyError as exc:
            _fail_input(f"--policies {v.label!r}: {exc}")
    sc = _load(scenario, set_)
    try:
        sc = with_flush(sc, flush)
        for v in names:
            check_variant(v, sc)
    except ScenarioError as exc:
        _fail_input(str(exc))
    out_dir = out_dir_for(out, f"compare-{sc.name}")

    _sigterm_as_interrupt()
    with fanout_errors(), RunProgress("compare", len(names) * seeds, quiet) as bar:
        report = run_compare(sc, names, seeds, out_dir, workers=workers, address=address, sources=sources,
                             on_result=lambda r: bar.advance(), flush=flush, sets=set_)
    print_compare(report["rows"], out_console, title=compare_title(sc, names, seeds, flush is not None))
    print_verdicts(report["rows"], out_console)
    finish(report, "compare.json")


@app.command()
def sweep(
    scenario: Path = typer.Argument(..., help=SCENARIO_HELP),
    param: list[str] = typer.Option(..., "--param", help="an axis: key.path=v1,v2,... (repeatable)"),
    seeds: int = typer.Option(1, "--seeds", min=1, max=1000, help="seeds per point (scenario seed, +1, ...)"),
    runtime: str = typer.Option("sim", "--runtime", "-r", help="sim (points as Ray tasks, in parallel) or ray "
                                "(points one after another, live)"),
    set_: list[str] = typer.Option([], "--set", help="override a field for every point: key.path=value"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for sweep.json and sweep.png"),
    address: Optional[str] = typer.Option(None, "--address", help="the Ray cluster to join (default: an embedded "
                                          "local Ray): sim points fan out to it, ray points run live on it"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="sim runtime: " + WORKERS_HELP),
    policy: Optional[str] = typer.Option(None, "--policy", "-p", help="override policy.name (its parameters the "
                                         "new policy has are kept); sweep policies with --param policy.name=a,b"),
    policy_file: list[Path] = typer.Option([], "--policy-file", help=POLICY_FILE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    format_: str = typer.Option("rich", "--format", help=FORMAT_HELP),
) -> None:
    """Run a grid over scenario parameters and seeds; print a table, write JSON and a chart."""
    use_format(format_)
    if runtime not in ("sim", "ray"):
        _fail_input(f"--runtime {runtime!r}: {did_you_mean(runtime, ('sim', 'ray'))}the runtimes are sim and ray.")
    sources = _plugins(policy_file)
    sc = _load(scenario, set_, policy)
    from ats_stress.cluster.experiments.sweep import grid, policies_of, run_sweep, sweep_title
    from ats_stress.cluster.results.text import print_compare

    try:
        points = grid(sc, param, seeds, str(scenario))
    except ScenarioError as exc:
        _fail_input(str(exc))
    out_dir = out_dir_for(out, f"sweep-{sc.name}-{'+'.join(policies_of(points))}")
    _sigterm_as_interrupt()
    with fanout_errors():
        with RunProgress("sweep", len(points), quiet or runtime == "ray") as bar:
            report = run_sweep(sc, param, seeds, out_dir, source=str(scenario), runtime=runtime, address=address,
                               workers=workers, sources=sources, on_result=lambda r: bar.advance(), points=points,
                               sets=set_)
    print_compare(report["rows"], out_console, title=sweep_title(sc, points, report["params"], seeds, runtime))
    finish(report, "sweep.json")


@app.command()
def explore(
    scenario: Path = typer.Argument(..., help=SCENARIO_HELP + "; its topology and workload are kept, the fault "
                                    "grammar is its explore: section"),
    policy: Optional[str] = typer.Option(None, "--policy", "-p", help="override policy.name"),
    budget: Optional[int] = typer.Option(None, "--budget", min=1, max=1_000_000,
                                         help="variants to run (default 100, or unbounded with --time)"),
    time_limit: Optional[str] = typer.Option(None, "--time", help="stop searching and shrinking after this long "
                                             "(e.g. 10m)"),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="explore seed (default: the scenario's seed)"),
    check: Optional[str] = typer.Option(None, "--check", help="comma-separated properties: uaf, healthy-fenced, "
                                        "progress, incomplete, lockup, stall, expect, expect.FIGURE (default: all "
                                        "but incomplete)"),
    lockup_bound: str = typer.Option("10s", "--lockup-bound", help="lockup: the longest allowed window with "
                                     "interrupts off (default 10 s, the hard-lockup detector's watchdog_thresh)"),
    stall_bound: str = typer.Option("20s", "--stall-bound", help="stall: the longest allowed time inside one "
                                    "flush (default 20 s, the soft-lockup detector's 2 x watchdog_thresh)"),
    progress_bound: Optional[str] = typer.Option(None, "--progress-bound", help="progress: how long an unmap may "
                                                 "still wait once the last fault is over (default: the longest "
                                                 "clock of the policy and the hardware, plus explore.settle)"),
    shrink_runs: int = typer.Option(200, "--shrink-runs", min=1, help="runs allowed to shrink one violation"),
    shrink_max: int = typer.Option(3, "--shrink-max", min=0, help="violations shrunk per property (the first ones)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for explore.json, minimal-*.yaml and "
                                       "report.md (default runs/explore-NAME-POLICY)"),
    policy_file: list[Path] = typer.Option([], "--policy-file", help=POLICY_FILE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    format_: str = typer.Option("rich", "--format", help=FORMAT_HELP),
) -> None:
    """Search chaos schedules for violated properties; shrink each to a minimal scenario that `run` reproduces.

    Exit 0 when nothing was violated, 1 when something was, 2 on bad input, 3 when runs failed
    with an error or could not be carried out, 130 when interrupted (what was found so far is
    written first)."""
    use_format(format_)
    from ats_stress.cluster.experiments.explore import run_explore
    from ats_stress.cluster.experiments.explore_report import write_outputs
    from ats_stress.cluster.experiments.pool import Pool
    from ats_stress.cluster.experiments.properties import select
    from ats_stress.cluster.plugins import origin

    seconds = None if time_limit is None else _positive_duration("--time", time_limit)
    bound = _positive_duration("--lockup-bound", lockup_bound)
    stall = _positive_duration("--stall-bound", stall_bound)
    progress_s = None if progress_bound is None else _positive_duration("--progress-bound", progress_bound)
    budget = budget or (None if seconds else 100)
    sources = _plugins(policy_file)
    sc = _load(scenario, set_, policy)
    out_dir = out_dir_for(out, f"explore-{sc.name}-{sc.policy.name}")
    names = None if check is None else [c.strip() for c in check.split(",") if c.strip()]
    _sigterm_as_interrupt()
    with fanout_errors():
        checks = select(sc, names, bound, stall, progress_s)
        with Pool(workers, address, sources) as pool, \
                RunProgress("explore", budget, quiet, fields=("violations", "shrink_steps")) as bar:
            found = run_explore(sc, pool, checks, seed=sc.seed if seed is None else seed, budget=budget,
                                time_limit=seconds, shrink_runs=shrink_runs, shrink_max=shrink_max,
                                progress=_explore_progress(bar, quiet))
    plugin_args = [f"--policy-file {src.path}" for src in sources]
    res, files = write_outputs(found, out_dir, origin(sc.policy.name), plugin_args)
    print_explore(res)
    print_written([str(f) for f in files])
    if res["interrupted"]:
        err_console.print("interrupted: the files above hold what was found up to then", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    problems = []
    if res["error"]:
        problems.append(f"the search stopped: {res['error']} The files above hold what was found up to then.")
    if res["failed_runs"]:
        problems.append(f"{res['failed_runs']} variant run(s) failed with an error, so they checked nothing "
                        f"(first: {res['first_error']}).")
    exit_if_failed(problems)
    raise typer.Exit(1 if res["violations"] else 0)


def _positive_duration(opt: str, text: str) -> float:
    from ats_stress.iommu_actor.units import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        _fail_input(f"{opt} {text!r}: {exc}.")
    if value <= 0:
        _fail_input(f"{opt} {text!r}: must be above 0.")
    return value


def _explore_progress(bar: RunProgress, quiet: bool):
    """The bar's counts, and one line on stderr when a property is first found violated."""
    from ats_stress.cluster.experiments.explore_report import shown

    seen: set[str] = set()

    def show(s) -> None:
        bar.update(completed=s.explored, violations=len(s.violations), shrink_steps=s.shrink_steps)
        for v in s.violations:
            if v.prop not in seen and not quiet:
                seen.add(v.prop)
                figure = next(c["figure"] for c in s.checks if c["property"] == v.prop)
                err_console.print(f"first {v.prop} violation: variant {v.variant} (seed {v.seed}), "
                                  f"observed {figure} = {shown(figure, v.observed)}", highlight=False)
    return show


def print_explore(res: dict) -> None:
    from rich.table import Table

    from ats_stress.cluster.experiments.explore_report import findings, smallest

    extended = res["runs"].get("extended")
    t = Table(title=f"explore {res['scenario']} · policy {res['policy']} · seed {res['seed']} · "
                    f"{res['explored']} variant(s)" + (f" ({extended} run longer to judge progress)" if extended else "")
                    + f", {res['runs']['shrinking']} shrink run(s)", title_justify="left")
    for col in ("property", "violating", "shrunk", "smallest minimal (steps)"):
        t.add_column(col)
    for c in res["checks"]:
        vs = [v for v in res["violations"] if v["property"] == c["property"]]
        best = smallest(res, c["property"])
        what = "-"
        if best:
            what = f"{best['minimal_file']} ({best['minimal_steps']}{': no fault' if not best['minimal_steps'] else ''}" \
                   f"{', lying device' if best.get('needs_lie') else ''})"
        t.add_row(c["property"], str(len(vs)), str(sum(v["shrunk"] for v in vs)), what)
    out_console.print(t)
    for line in findings(res):
        out_console.print(line, highlight=False, soft_wrap=True)
