"""Human-readable output: the summary printed after a run, expectation lines, and the compare and
sweep tables, each fitted to the console's width (transposed when that fits, else split)."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ats_stress.cluster.scenario import EXPECTABLE
from ats_stress.iommu_actor.units import format_duration


def _d(v: Any) -> str:
    return "-" if v is None else format_duration(v)


def _n(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _get(s: dict, *path: str) -> Any:
    for key in path:
        if not isinstance(s, dict):
            return None
        s = s.get(key)
    return s


# --- expectations -------------------------------------------------------------------------------

#: (unit, seconds per unit) for time figures, largest first
TIME_UNITS = [("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)]


def _unit(name: str, bound: dict, observed: Any) -> tuple[str, float]:
    """One unit for a time figure's bound and observation, chosen by the bound (else the
    observation); ("", 1) for counts, ratios and anything unknown."""
    _, is_time = EXPECTABLE.get(name.split("@")[0], ((), False))
    if not is_time:
        return "", 1.0
    nums = [abs(v) for v in bound.values() if isinstance(v, (int, float)) and not isinstance(v, bool) and v]
    ref = max(nums) if nums else (abs(observed) if isinstance(observed, (int, float)) else 1.0)
    return next(((u, k) for u, k in TIME_UNITS if ref >= k), TIME_UNITS[-1])


def _num(v: Any, unit: str, scale: float) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, list):
            return "; ".join(map(str, v)) or "none"
        return "-" if v is None else str(v)
    if unit:
        x = v / scale
        text = f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"
        if "." not in text and "e" not in text and abs(x) < 100:
            text += ".0"
        return f"{text} {unit}"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return _n(v)


def bound_text(e: dict) -> str:
    """``<= 1.1 s``, ``>= 1 and <= 5``, ``saturated = False``."""
    unit, scale = _unit(e["name"], e["bound"], e.get("observed"))
    parts = []
    for k, v in e["bound"].items():
        op = {"max": "<=", "min": ">="}.get(k)
        parts.append(f"{op} {_num(v, unit, scale)}" if op else f"{k} = {v}")
    return " and ".join(sorted(parts, key=lambda p: not p.startswith(">=")))


def observed_text(e: dict) -> str:
    unit, scale = _unit(e["name"], e["bound"], e.get("observed"))
    return _num(e.get("observed"), unit, scale)


def expectation_line(e: dict) -> str:
    """``fence_after_sync_max <= 1.1 s: observed 1.0 s, ok``."""
    return f"{e['name']} {bound_text(e)}: observed {observed_text(e)}, {'ok' if e['ok'] else 'VIOLATED'}"


def _expectation_text(e: dict) -> Text:
    head, verdict = expectation_line(e).rsplit(", ", 1)
    return Text.assemble("expect ", head, ", ", (verdict, "green" if e["ok"] else "bold red"))


# --- the summary ----------------------------------------------------------------------------------


def print_summary(s: dict, console: Console | None = None) -> None:
    console = console or Console()
    title = f"{s.get('scenario')} · policy {s.get('policy')} · {s.get('runtime')} runtime · seed {s.get('seed')}"
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("figure")
    t.add_column("value")
    un = s.get("unmaps") or {}
    hl = s.get("healthy_unmap_latency_s") or {}
    errors = s.get("completion_errors") or {}
    rows = [
        ("status", s.get("status")),
        ("scenario time", _d(s.get("sim_time_s"))),
        ("wall time / events per s", f"{_d(_get(s, 'wall', 'time_s'))} / {_n(_get(s, 'wall', 'events_per_s'))}"),
        ("unmaps completed (incomplete)", f"{un.get('count')} ({un.get('incomplete')})"),
        ("healthy unmap latency p50 / p99 / max", f"{_d(hl.get('p50'))} / {_d(hl.get('p99'))} / {_d(hl.get('max'))}"),
        ("software sync timeouts", s.get("sync_timeouts")),
        ("hardware ATC timeouts (CERROR_ATC_INV_SYNC)", f"{s.get('hw_atc_timeouts')} ({s.get('cmdq_errors')})"),
        ("completion errors (code: count)", ", ".join(f"{k}: {v}" for k, v in errors.items()) if errors else "none"),
        ("fences (healthy fenced)", f"{s.get('fence_count')} ({s.get('fenced_healthy')})"),
        ("fence latency max", _d(_get(s, "fence_latency_s", "max"))),
        ("unfences / recovery max", f"{s.get('unfence_count')} / {_d(_get(s, 'recovery_s', 'max'))}"),
        ("UAF exposures (page reallocated)", f"{s.get('uaf_exposures')} ({s.get('uaf_reallocated')})"),
        ("translated requests blocked", s.get("translated_blocked")),
        ("interrupts off: total / longest window", f"{_d(s.get('lockup_s'))} / {_d(s.get('irqs_off_max_s'))}"),
        ("longest time inside one flush", _d(s.get("flush_max_s"))),
        ("GERROR taken late (longest wait)", f"{s.get('gerror_irqs_late')} of {s.get('gerror_irqs')} "
                                             f"({_d(s.get('gerror_irq_delay_max_s'))})"),
        ("command queue full: waits (time)", f"{s.get('cmdq_full_waits')} ({_d(s.get('cmdq_full_wait_s'))})"),
        ("commands / CMD_SYNCs per unmap", f"{_n(s.get('commands_per_unmap'))} / {_n(s.get('syncs_per_unmap'))}"),
    ]
    for k, v in rows:
        t.add_row(k, "-" if v is None else str(v))
    console.print(t)
    note = live_lockup_note(s)
    if note:
        console.print(note, style="dim")
    v = s.get("verdict") or {}
    if v.get("line"):
        word, _, rest = v["line"].partition(": ")
        style = "bold green" if v.get("safe") else "bold yellow" if word == "INCONCLUSIVE" else "bold red"
        console.print(Text.assemble("verdict: ", (word, style), ": ", rest))
        if v.get("inaction"):
            console.print("why nothing was fenced: " + " ".join(v["inaction"]), style="dim", highlight=False)
    for e in s.get("expectations") or []:
        console.print(_expectation_text(e), soft_wrap=True)


def live_lockup_note(s: dict) -> str | None:
    """On the live runtime each CMD_SYNC waiting on a device spins for at least a transport round
    trip, where the sim's PCIe link takes microseconds: the lockup total adds those up."""
    if s.get("runtime") != "ray" or not s.get("lockup_s"):
        return None
    rt = (s.get("transport") or {}).get("device_round_trip_wall_s") or {}
    scale = (s.get("transport") or {}).get("time_scale") or 1.0
    mean = rt.get("mean")
    trip = f" (mean {_d(mean / scale)} of scenario time here)" if mean else ""
    return (f"CPU lockup on the live runtime: every CMD_SYNC that waits on a device spins for at least "
            f"one transport round trip{trip}, where a PCIe round trip on sim takes microseconds, so the "
            f"total ({_d(s['lockup_s'])}) adds up the transport's share too; compare totals on sim. The "
            f"longest window ({_d(s.get('irqs_off_max_s'))}) compares across runtimes.")


# --- compare and sweep tables --------------------------------------------------------------------


def print_verdicts(rows: list[dict], console: Console | None = None) -> None:
    """compare: one verdict line per policy, every failure any of its runs showed."""
    from ats_stress.cluster.results.verdict import SHORT

    console = console or Console()
    width = max((len(str(r.get("policy"))) for r in rows), default=0)
    for r in rows:
        modes = r.get("verdict")
        if modes is None:
            text = Text("-", style="dim")
        elif not modes:
            text = Text("SAFE", style="bold green")
        else:
            word = "INCONCLUSIVE" if modes == ["saturated"] else "UNSAFE"
            text = Text.assemble((word, "bold yellow" if word == "INCONCLUSIVE" else "bold red"),
                                 ": " + ", ".join(SHORT[m] for m in modes))
        console.print(Text.assemble("verdict ", str(r.get("policy")).ljust(width), "  ", text))

COMPARE_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("uaf_exposures", "UAF", _n),
    ("healthy_p50", "healthy p50", _d),
    ("healthy_p99", "healthy p99", _d),
    ("healthy_max", "healthy max", _d),
    ("worst_stall_s", "worst stall", _d),
    ("sync_timeouts", "sync timeouts", _n),
    ("fences", "fences", _n),
    ("fenced_healthy", "healthy fenced", _n),
    ("fence_latency_s", "fence latency", _d),
    ("recovery_s", "recovery", _d),
    ("lockup_s", "CPU lockup", _d),
    ("commands_per_unmap", "cmds/unmap", _n),
    ("syncs_per_unmap", "syncs/unmap", _n),
    ("events_per_s", "events/s", _n),
]


def _width(header: str, cells: list[str]) -> int:
    """A column's width: its longest cell, or its header's longest word (headers wrap)."""
    return max([len(w) for w in header.split()] + [len(c) for c in cells] + [1])


def _table_width(widths: list[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1  # a space either side of each cell, and the rules


def _labels(rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """(label headers, label cells per row, one header per row for the transposed table): the
    policy for compare rows; for sweep rows, the point, one column per swept key."""
    if rows and all(isinstance(r.get("point"), dict) for r in rows):
        keys = list(rows[0]["point"])
        short = [k.rsplit(".", 1)[-1] for k in keys]
        if len(set(short)) < len(short):
            short = keys
        cells = [[str(r["point"].get(k)) for k in keys] for r in rows]
        return keys, cells, ["\n".join(f"{s}={c}" for s, c in zip(short, row)) for row in cells]
    names = [str(r.get("policy")) for r in rows]
    return ["policy"], [[n] for n in names], names


def print_compare(rows: list[dict], console: Console | None = None, title: str = "") -> None:
    """One row per policy (compare) or point (sweep) and one column per figure, fitted to the
    console: transposed (figures down, policies or points across) when that fits, else the figure
    columns split over as many tables as it takes, each repeating the policy or point."""
    console = console or Console()
    width = console.width
    label_heads, label_cells, across = _labels(rows)
    figures = [(label, [fmt(r.get(key)) for r in rows]) for key, label, fmt in COMPARE_COLUMNS]
    # transposed
    widths = [max(len(label) for label, _ in figures)]
    for i, head in enumerate(across):
        widths.append(max([len(x) for x in head.split("\n")] + [len(cells[i]) for _, cells in figures]))
    if _table_width(widths) <= width:
        t = Table()
        t.add_column("figure", no_wrap=True, width=widths[0])
        for head, w in zip(across, widths[1:]):
            t.add_column(head, justify="right", width=w)
        for label, cells in figures:
            t.add_row(label, *cells)
        console.print(title, soft_wrap=True, highlight=False)
        console.print(t)
        return
    # one row per policy or point, the figures split evenly over as few tables as fit
    lw = [_width(h, [c[i] for c in label_cells]) for i, h in enumerate(label_heads)]
    if len(label_heads) > 1 and _table_width(lw) > width // 3:
        # the swept keys would crowd the figures out of every table: number the points, list them once
        short = [h.rsplit(".", 1)[-1] for h in label_heads]
        if len(set(short)) < len(short):
            short = label_heads
        number_w = len(str(len(label_cells)))
        legend = Table()
        legend.add_column("#", justify="right", no_wrap=True, width=max(1, number_w))
        for i, h in enumerate(short):
            legend.add_column(h, no_wrap=True, width=_width(h, [c[i] for c in label_cells]))
        for i, cells in enumerate(label_cells):
            legend.add_row(str(i + 1), *cells)
        console.print(f"{title} · the points ({', '.join(label_heads)})", highlight=False)
        console.print(legend)
        label_heads, label_cells = ["#"], [[str(i + 1)] for i in range(len(label_cells))]
        lw = [_width("#", [c[0] for c in label_cells])]
    fw = [_width(label, cells) for label, cells in figures]
    for n in range(1, len(figures) + 1):
        bounds = [round(k * len(figures) / n) for k in range(n + 1)]
        chunks = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
        if all(_table_width(lw + [fw[j] for j in c]) <= width for c in chunks):
            break
    for n, chunk in enumerate(chunks):
        part = f" ({n + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        t = Table()
        for h, w in zip(label_heads, lw):
            t.add_column(h, no_wrap=True, width=w)
        for j in chunk:
            t.add_column(figures[j][0], justify="right", width=fw[j])
        for i, cells in enumerate(label_cells):
            t.add_row(*cells, *[figures[j][1][i] for j in chunk])
        console.print(title + part, soft_wrap=True, highlight=False)
        console.print(t)
