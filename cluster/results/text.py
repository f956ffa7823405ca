"""Human-readable output: the summary printed after a run, and the compare table."""

from __future__ import annotations

from typing import Any

from ats_stress.iommu_actor.units import format_duration

from rich.console import Console
from rich.table import Table


def _d(v: Any) -> str:
    return "-" if v is None else format_duration(v)


def _n(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def print_summary(s: dict, console: Console | None = None) -> None:
    console = console or Console()
    title = f"{s['scenario']} · policy {s['policy']} · {s['runtime']} runtime · seed {s['seed']}"
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("figure")
    t.add_column("value")
    un = s["unmaps"]
    hl = s["healthy_unmap_latency_s"]
    rows = [
        ("status", s["status"]),
        ("scenario time", _d(s["sim_time_s"])),
        ("wall time / events per s", f"{_d(s['wall']['time_s'])} / {_n(s['wall']['events_per_s'])}"),
        ("unmaps completed (incomplete)", f"{un['count']} ({un['incomplete']})"),
        ("healthy unmap latency p50 / p99 / max", f"{_d(hl['p50'])} / {_d(hl['p99'])} / {_d(hl['max'])}"),
        ("software sync timeouts", s["sync_timeouts"]),
        ("hardware ATC timeouts (CERROR_ATC_INV_SYNC)", f"{s['hw_atc_timeouts']} ({s['cmdq_errors']})"),
        ("fences (healthy fenced)", f"{s['fence_count']} ({s['fenced_healthy']})"),
        ("fence latency max", _d(s["fence_latency_s"]["max"])),
        ("unfences / recovery max", f"{s['unfence_count']} / {_d(s['recovery_s']['max'])}"),
        ("UAF exposures (page reallocated)", f"{s['uaf_exposures']} ({s['uaf_reallocated']})"),
        ("translated requests blocked", s["translated_blocked"]),
        ("CPU lockup (irqs-off spinning)", _d(s["lockup_s"])),
        ("commands / CMD_SYNCs per unmap", f"{_n(s['commands_per_unmap'])} / {_n(s['syncs_per_unmap'])}"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    for e in s["expectations"]:
        mark = "[green]ok[/green]" if e["ok"] else "[red]VIOLATED[/red]"
        console.print(f"expect {e['name']} {e['bound']}: observed {_n(e['observed'])} {mark}")


COMPARE_COLUMNS = [
    ("uaf_exposures", "UAF", _n),
    ("healthy_p50", "healthy p50", _d),
    ("healthy_p99", "healthy p99", _d),
    ("healthy_max", "healthy max", _d),
    ("worst_stall_s", "worst stall", _d),
    ("sync_timeouts", "sync t/o", _n),
    ("fences", "fences", _n),
    ("fenced_healthy", "healthy fenced", _n),
    ("fence_latency_s", "fence latency", _d),
    ("recovery_s", "recovery", _d),
    ("lockup_s", "CPU lockup", _d),
    ("commands_per_unmap", "cmds/unmap", _n),
    ("syncs_per_unmap", "syncs/unmap", _n),
    ("events_per_s", "events/s", _n),
]


def print_compare(rows: list[dict], console: Console | None = None, title: str = "") -> None:
    console = console or Console()
    t = Table(title=title, title_justify="left")
    t.add_column("policy")
    for _, label, _ in COMPARE_COLUMNS:
        t.add_column(label, justify="right")
    for r in rows:
        t.add_row(r["policy"], *[fmt(r.get(key)) for key, _, fmt in COMPARE_COLUMNS])
    console.print(t)
