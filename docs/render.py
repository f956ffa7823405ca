"""Fills the tables of docs/policies.md from the runs docs/figures.sh made (runs/docs/*/*.json).

Each table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->`` in the document and is
rewritten in place; the prose around it is left alone. Figures are aggregated here from the raw
run summaries (sums of counts, maxima of worst cases, means of rates), grouped by what the run
was: policy, version or culprit search, command queues, hardware ATC timeout, flush mode.

    python docs/render.py            # rewrite docs/policies.md
    python docs/render.py --check    # exit 1 if a table would change
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "docs"
DOC = ROOT / "docs" / "policies.md"
HW_TIMEOUTS = [0.05, 0.5, 1.0, 5.0, 60.0]
VERSIONS = ["v1", "v2", "v3", "v4"]


def runs(name: str) -> list[dict]:
    path = next((RUNS / name).glob("*.json"))
    return json.loads(path.read_text())["runs"]


def variant(r: dict) -> str:
    p = r["policy_params"] or {}
    if r["policy"] == "quarantine":
        return f"quarantine {p['version']}"
    if "culprit_search" in p and r["policy"] != "iommu-core":
        window = f", poll_window {d(p['poll_window'])}" if p.get("poll_window") else ""
        return f"{r['policy']} ({p['culprit_search']}{window})"
    return r["policy"]


def irq_cpu(r: dict) -> str:
    """Where the GERROR interrupt went: "busy" (a CPU that flushes, CPU 0 by default) or "idle"."""
    return "idle" if (r.get("host") or {}).get("gerror_irq_cpu") == "idle" else "busy"


def hw_timeout(r: dict) -> float:
    return float(r["hardware"]["atc_inv_completion_timeout"])


def group(rs: list[dict], **match) -> list[dict]:
    out = []
    for r in rs:
        if all(f(r) == v for f, v in ((FIELDS[k], v) for k, v in match.items())):
            out.append(r)
    return out


FIELDS = {"variant": variant, "hw": hw_timeout, "queues": lambda r: r["command_queues"],
          "flush": lambda r: r["flush"]["mode"], "policy": lambda r: r["policy"], "irq": irq_cpu}


def _max(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def figures(rs: list[dict]) -> dict:
    n = len(rs)
    return {
        "runs": n,
        "uaf": sum(r["uaf_exposures"] for r in rs),
        "uaf_realloc": sum(r["uaf_reallocated"] for r in rs),
        "stall": _max(r["worst_stall_s"] for r in rs),
        "sync_timeouts": sum(r["sync_timeouts"] for r in rs),
        "hw_timeouts": sum(r["hw_atc_timeouts"] for r in rs),
        "fences": sum(r["fence_count"] for r in rs),
        "healthy_fenced": sum(r["fenced_healthy"] for r in rs),
        "fence_latency": _max(r["fence_latency_s"]["max"] for r in rs),
        "lockup": sum(r["lockup_s"] for r in rs) / n if n else None,
        "irqs_off_max": _max(r["irqs_off_max_s"] for r in rs),
        "flush_max": _max(r["flush_max_s"] for r in rs),
        "gerror_delay": _max(r["gerror_irq_delay_max_s"] for r in rs),
        "cmdq_full": sum(r["cmdq_full_waits"] for r in rs),
        "cmdq_dropped": sum(r["cmdq_dropped"] for r in rs),
        "incomplete": sum(r["unmaps"]["incomplete"] for r in rs),
        "spu": sum(r["syncs_per_unmap"] or 0 for r in rs) / n if n else None,
        "cpu": sum(r["commands_per_unmap"] or 0 for r in rs) / n if n else None,
        "window": sum(r["lazy_window_dma"] for r in rs),
        "resets": sum(r["resets_requested"] for r in rs),
    }


# --- formatting ------------------------------------------------------------------------------------


def d(s) -> str:
    """A duration for a person: 140 ms, 1.02 s, 20 s."""
    if s is None:
        return "-"
    if s == 0:
        return "0"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.0f} ms"
    return f"{s:.3g} s"


def n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:.3g}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


# --- the tables ------------------------------------------------------------------------------------


def t_drivers() -> list[str]:
    rs = runs("compare-q1")
    rows = []
    for v in dict.fromkeys(variant(r) for r in rs):
        g = group(rs, variant=v)
        f = figures(g)
        rows.append([f"`{v}`", g[0]["flush"]["mode"], f"{n(f['uaf'])} ({n(f['uaf_realloc'])})", d(f["stall"]),
                     n(f["sync_timeouts"]), f"{f['fences']} ({f['healthy_fenced']})",
                     f"{d(f['lockup'])} / {d(f['irqs_off_max'])}", d(f["flush_max"]), n(f["spu"])])
    return table(["policy", "flush", "UAF (page reallocated)", "worst healthy stall", "software sync timeouts",
                  "fences (healthy)", "interrupts off: total / longest window", "longest flush",
                  "CMD_SYNCs per unmap"], rows)


FOT_PDB = "fence-on-timeout (per-device-batches)"
FOT_WINDOW = "fence-on-timeout (per-device-batches, poll_window 1 s)"


def _by_hw(fmt, queues: int = 1) -> list[str]:
    """One row per hardware ATC timeout and GERROR CPU (busy: CPU 0, which flushes; idle: the best case)."""
    series = runs("sweep-series")
    fot = runs("sweep-fot-irq")
    cols = [f"quarantine {v}" for v in VERSIONS] + [FOT_PDB, FOT_WINDOW]
    rows = []
    for hw in HW_TIMEOUTS:
        for irq in ("busy", "idle"):
            cells = []
            for c in cols:
                src = fot if c.startswith("fence") else series
                g = group(src, variant=c, hw=hw, queues=queues, irq=irq)
                cells.append(fmt(figures(g)) if g else "-")
            rows.append([d(hw), irq] + cells)
    return table(["hardware ATC timeout", "GERROR CPU"] + [f"`{c}`" for c in cols], rows)


def t_series_uaf() -> list[str]:
    return _by_hw(lambda f: n(f["uaf"]) + (f" ({n(f['incomplete'])} unmaps never done)" if f["incomplete"] > 50 else ""))


def t_series_fenced() -> list[str]:
    return _by_hw(lambda f: f"{f['fences']} ({f['healthy_fenced']})")


def t_series_stall() -> list[str]:
    return _by_hw(lambda f: d(f["stall"]))


def t_series_spin() -> list[str]:
    return _by_hw(lambda f: f"{d(f['irqs_off_max'])} / {d(f['flush_max'])}")


def t_series_irq() -> list[str]:
    return _by_hw(lambda f: d(f["gerror_delay"]))


def t_queues() -> list[str]:
    series = runs("sweep-series")
    fot = runs("sweep-fot")
    rows = []
    for hw in (0.05, 60.0):
        for q in (1, 9, 33):
            cells = []
            for src, v in ((series, "quarantine v4"), (fot, "fence-on-timeout (per-device-batches)"),
                           (fot, "fence-on-timeout (bisect)")):
                f = figures(group(src, variant=v, hw=hw, queues=q, irq="busy"))
                cells.append(f"{n(f['uaf'])} UAF, {f['fences']} ({f['healthy_fenced']}) fenced, stall {d(f['stall'])}")
            rows.append([d(hw), QUEUES[q]] + cells)
    return table(["hardware ATC timeout", "command queues", "`quarantine v4`",
                  "`fence-on-timeout` per-device-batches", "`fence-on-timeout` bisect"], rows)


QUEUES = {1: "1", 9: "9 (8 CPU + 1)", 33: "33 (8 CPU + 24 spare + 1)"}


def t_search() -> list[str]:
    fot = runs("sweep-fot")
    rows = []
    for q in (1, 9, 33):
        for s in ("bisect", "linear", "per-device-batches"):
            f = figures(group(fot, variant=f"fence-on-timeout ({s})", hw=60.0, queues=q))
            rows.append([QUEUES[q], s, d(f["fence_latency"]) if f["fences"] else "no fence", d(f["stall"]),
                         n(f["hw_timeouts"]), f"{d(f['irqs_off_max'])} / {d(f['flush_max'])}", n(f["spu"]),
                         n(f["cpu"])])
    return table(["command queues", "culprit search", "fence latency (max)", "worst healthy stall",
                  "hardware timeouts", "longest window with interrupts off / flush", "CMD_SYNCs per unmap",
                  "commands per unmap"], rows)


def t_lazy() -> list[str]:
    rs = runs("sweep-lazy")
    rows = []
    for p in dict.fromkeys(r["policy"] for r in rs):
        for mode in ("strict", "lazy"):
            g = group(rs, policy=p, flush=mode)
            f = figures(g)
            iovas = g[0]["flush"]["iovas_per_flush"] if g else None
            rows.append([f"`{p}`", mode, f"{n(f['uaf'])} ({n(f['uaf_realloc'])})", n(f["window"]), d(f["stall"]),
                         n(f["spu"]), "-" if iovas is None else n(iovas), d(f["irqs_off_max"]),
                         f"{n(f['cmdq_full'])} ({n(f['cmdq_dropped'])})"])
    return table(["policy", "flush", "UAF (page reallocated)", "lazy-window DMA", "worst healthy stall",
                  "CMD_SYNCs per unmap", "IOVAs per flush", "longest window with interrupts off",
                  "queue full (commands dropped)"], rows)


def t_lying() -> list[str]:
    rs = runs("compare-lying")
    rows = []
    for v in dict.fromkeys(variant(r) for r in rs):
        f = figures(group(rs, variant=v))
        rows.append([f"`{v}`", n(f["uaf"]), str(f["fences"]), n(f["sync_timeouts"])])
    return table(["policy", "UAF", "fences", "software sync timeouts"], rows)


EXPLORED = ["arm-smmu-v3", "amd-iommu", "intel-vtd", "quarantine-v1", "quarantine-v2", "quarantine-v3", "quarantine",
            "fence-on-timeout", "iommu-core"]


def _explored_name(label: str) -> str:
    return "quarantine v4" if label == "quarantine" else label.replace("quarantine-", "quarantine ")


def t_explore() -> list[str]:
    """What docs/explore.sh's runs found: per policy and property, the smallest shrunk schedule."""
    from ats_stress.cluster.experiments.explore_report import schedule_text, smallest

    rows = []
    for label in EXPLORED:
        res = json.loads((RUNS / f"explore-{label}" / "explore.json").read_text())
        for check in res["checks"]:
            prop = check["property"]
            n_viol = sum(v["property"] == prop for v in res["violations"])
            if not n_viol:
                continue
            best = smallest(res, prop)
            steps = "-"
            if best:
                steps = schedule_text(best) + (" (needs a lying device)" if best.get("needs_lie") else "")
            rows.append([f"`{_explored_name(label)}`", prop, f"{n_viol} of {res['explored']}", steps])
    clean = [f"`{_explored_name(lb)}`" for lb in EXPLORED]
    found = {r[0] for r in rows}
    note = [f"No property was violated under {', '.join(c for c in clean if c not in found)}."] if found != set(clean) else []
    return table(["policy", "property", "violating variants", "smallest schedule that still violates it"], rows) + (
        [""] + note if note else [])


TABLES = {"explore": t_explore, "drivers": t_drivers, "series-uaf": t_series_uaf, "series-fenced": t_series_fenced,
          "series-stall": t_series_stall, "series-spin": t_series_spin, "series-irq": t_series_irq,
          "queues": t_queues, "search": t_search,
          "lazy": t_lazy, "lying": t_lying}
BLOCK = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def render(text: str) -> str:
    def fill(m):
        name = m.group(2)
        if name not in TABLES:
            raise SystemExit(f"docs/policies.md names a table {name!r} that render.py does not make")
        return m.group(1) + "\n".join(TABLES[name]()) + "\n" + m.group(4)
    return BLOCK.sub(fill, text)


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    new = render(text)
    if "--check" in argv:
        return 0 if new == text else 1
    DOC.write_text(new)
    print(f"{DOC}: {len(BLOCK.findall(new))} tables written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
