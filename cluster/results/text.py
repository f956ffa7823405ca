"""Human-readable output: the summary printed after a run, expectation lines, and the compare and
sweep tables, each fitted to the console's width (transposed when that fits, else split)."""

from __future__ import annotations

import re
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ats_stress.cluster.scenario import EXPECTABLE
from ats_stress.cluster.results.figures import BY_KEY, Figure, time_unit
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

from ats_stress.cluster.results.figures import TIME_UNITS  # noqa: E402  (s, ms, us, ns: largest first)


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
        *([("arrivals skipped: no page mapped", un["skipped_no_mapping"])] if un.get("skipped_no_mapping") else []),
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


def _dur(v: Any) -> str:
    """A duration in a compare or sweep cell, always with its unit (0 is "0s", not "0")."""
    if v is None:
        return "-"
    return "0s" if v == 0 else format_duration(v)


def _count(v: Any) -> str:
    """A count or rate in a cell: 120033, 3.5, 65169 (no exponent)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def _range(fig: Figure, spread_: dict | None) -> str:
    """The line below a figure: its lowest and highest seed, one unit for both (``19.84-19.89s``),
    and ``in k/n`` when only k of the n runs had a value (a fence latency where some seeds fenced)."""
    if not spread_:
        return ""
    lo, hi = spread_["min"], spread_["max"]
    if fig.kind == "time":
        unit, k = time_unit([hi])
        text = f"{lo / k:.3g}-{hi / k:.3g}{unit}"
    else:
        text = f"{_count(lo)}-{_count(hi)}"
    if spread_["of"] < spread_["runs"]:
        text += f" in {spread_['of']}/{spread_['runs']}"
    return text


_FORMAT: dict[str, Callable[[Any], str]] = {"time": _dur, "count": _count, "ratio": _n, "rate": _count}

#: the figures of the compare and sweep tables, in order (``figures.FIGURES`` keys)
TABLE_FIGURES = ["uaf_exposures", "lazy_window_dma", "healthy_p50", "healthy_p99", "healthy_max", "worst_stall_s",
                 "sync_timeouts", "hw_atc_timeouts", "fences", "fenced_healthy", "fence_latency_s", "recovery_s",
                 "lockup_s", "irqs_off_max_s", "flush_max_s", "commands_per_unmap", "syncs_per_unmap", "events_per_s"]

#: (row key, label, format) of each figure column, after the flush mode
COMPARE_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    (k, BY_KEY[k].label, _FORMAT[BY_KEY[k].kind]) for k in TABLE_FIGURES]


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


def _seeds_of(rows: list[dict]) -> int:
    return max([(r.get("runs") or 0) + (r.get("failed") or 0) for r in rows] + [1])


def _figure_cells(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """(label, a cell per row) for the flush mode and every figure; with several seeds, each label
    says how the seeds combine (sum, mean or max) and each cell has a second line: its lowest and
    highest seed."""
    seeds = _seeds_of(rows)
    out = [("flush", [str(r.get("flush") or "-") for r in rows])]
    for key, label, fmt in COMPARE_COLUMNS:
        fig = BY_KEY[key]
        cells = [fmt(r.get(key)) for r in rows]
        if seeds > 1:
            label = f"{label} ({fig.over_seeds})"
            cells = [c if not r.get("runs") else f"{c}\n{_range(fig, (r.get('min_max') or {}).get(key))}"
                     for c, r in zip(cells, rows)]
        out.append((label, cells))
    return out


def seeds_note(rows: list[dict]) -> str | None:
    """What a table over several seeds shows, said once below it."""
    seeds = _seeds_of(rows)
    if seeds <= 1:
        return None
    return (f"{seeds} seeds: each figure is their sum, mean or max, as its label says; below it, the lowest and the "
            f"highest seed (in k/{seeds}: only k seeds had one).")


def _cell_width(cell: str) -> int:
    return max(len(line) for line in cell.split("\n"))


def _cell(text: str) -> Text:
    """A cell; a second line (a figure's lowest and highest seed) dim."""
    first, nl, rest = text.partition("\n")
    return Text.assemble(first, nl, (rest, "dim")) if nl else Text(text)


def _width(header: str, cells: list[str]) -> int:
    """A column's width: its longest cell line, or its header's longest word (headers wrap)."""
    return max([len(w) for w in header.split()] + [_cell_width(c) for c in cells] + [1])


def _table_width(widths: list[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1  # a space either side of each cell, and the rules


def _wrap_key(key: str, width: int) -> str:
    """A swept key as a column header, broken after its '.' and '_' into lines of about ``width``
    (a header wraps only at spaces, and a key has none)."""
    pieces = re.findall(r"[^._]+[._]?|[._]", key)
    lines = [""]
    for p in pieces:
        if lines[-1] and len(lines[-1]) + len(p) > width:
            lines.append("")
        lines[-1] += p
    return "\n".join(lines)


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
    figures = _figure_cells(rows)
    note = seeds_note(rows)
    # transposed
    widths = [max(len(label) for label, _ in figures)]
    for i, head in enumerate(across):
        widths.append(max([len(x) for x in head.split("\n")] + [_cell_width(cells[i]) for _, cells in figures]))
    if _table_width(widths) <= width:
        t = Table()
        t.add_column("figure", no_wrap=True, width=widths[0])
        for head, w in zip(across, widths[1:]):
            t.add_column(head, justify="right", width=w)
        for label, cells in figures:
            t.add_row(label, *map(_cell, cells))
        console.print(title, soft_wrap=True, highlight=False)
        console.print(t)
        if note:
            console.print(note, highlight=False)
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
    else:  # a swept key longer than its values wraps after its '.' and '_' (it has no space to wrap at)
        cell_w = [max([len(c[i]) for c in label_cells] + [1]) for i in range(len(label_heads))]
        label_heads = [_wrap_key(h, max(w, 10)) for h, w in zip(label_heads, cell_w)]
        lw = [_width(h, [c[i] for c in label_cells]) for i, h in enumerate(label_heads)]
    fw = [_width(label, cells) for label, cells in figures]
    greedy: list[list[int]] = [[]]  # as many figures per table as fit, in order: the fewest tables
    for j in range(len(figures)):
        if greedy[-1] and _table_width(lw + [fw[i] for i in greedy[-1] + [j]]) > width:
            greedy.append([])
        greedy[-1].append(j)
    for n in range(1, len(figures) + 1):  # the fewest tables, with figures spread evenly when that fits
        bounds = [round(k * len(figures) / n) for k in range(n + 1)]
        chunks = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
        if all(_table_width(lw + [fw[j] for j in c]) <= width for c in chunks):
            break
        if len(greedy) <= n:
            chunks = greedy
            break
    for n, chunk in enumerate(chunks):
        part = f" ({n + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        t = Table()
        for h, w in zip(label_heads, lw):
            t.add_column(h, no_wrap=True, width=w)
        for j in chunk:
            t.add_column(figures[j][0], justify="right", width=fw[j])
        for i, cells in enumerate(label_cells):
            t.add_row(*cells, *[_cell(figures[j][1][i]) for j in chunk])
        console.print(title + part, soft_wrap=True, highlight=False)
        console.print(t)
    if note:
        console.print(note, highlight=False)
