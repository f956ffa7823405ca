"""The run report: DIR/report.md that tells the run's story, with its plots beside it.

``write_report(sc, summary, samples, out_dir)`` writes ``report.md`` and ``latency.png``,
``cmdq.png`` and ``endpoints.png`` beside ``summary.json``; without samples (a runtime that
gives none) the report has the text and no time plots. ``write_run_outputs`` is what ``run``
calls after summary.json: metrics.om (sim runs), the report and its plots.
"""

from __future__ import annotations

from pathlib import Path


from .plots import _targets, plot_cmdq, plot_endpoints, plot_latency
from .sampler import wedged_intervals
from .text import _d, _n, bound_text, live_lockup_note, observed_text

# --- the report ----------------------------------------------------------------------------------


#: what ``unmaps.skipped_no_mapping`` counts, for the reader of report.md and the terminal
SKIPPED_MEANS = ("each found no page mapped in its domain (every page of it already unmapped and "
                 "not yet mapped again: topology.pages_per_domain), so there was nothing to unmap")


def _queue_story(samples: dict | None) -> str | None:
    """Which command queues an unanswered CMD_SYNC wedged for a second or more, and until when."""
    if not samples or not samples.get("t"):
        return None
    long = [w for w in wedged_intervals(samples) if w["longest_s"] >= 1.0]
    if not long:
        return "No command queue was wedged for a second or more."
    parts = [f"smmu {w['smmu']} queue {w['queue']} from {_d(w['start'])} "
             + (f"until {_d(w['end'])}" if w["end"] is not None else "to the end of the run")
             + f" (a CMD_SYNC waited up to {_d(w['longest_s'])})"
             for w in sorted(long, key=lambda w: -w["longest_s"])[:5]]
    more = f"; {len(long) - 5} more" if len(long) > 5 else ""
    return ("Command queues wedged by an unanswered CMD_SYNC: " + "; ".join(parts) + more +
            ". Work queued behind it waits (or, with spare queues, the driver moves off it); a queue clears "
            "when its CMD_SYNC completes: the device answers, or the hardware's ATC_INV timeout gives up.")


def _irq_sentence(s: dict) -> str | None:
    """How long the error interrupts waited for their CPU (host.gerror_irq_cpu) to turn its interrupts on."""
    n, late = s.get("gerror_irqs", 0), s.get("gerror_irqs_late", 0)
    if not n and not late:
        return None
    if not late:
        return f"{n} GERROR interrupt(s), each taken at once (its CPU had interrupts on)."
    return (f"{late} of {n} GERROR interrupt(s) waited for their CPU: "
            f"it was inside a flush with interrupts off; the longest wait was {_d(s['gerror_irq_delay_max_s'])}, "
            "and the command queue stayed halted meanwhile (host.gerror_irq_cpu: idle is the best case).")


def _verdict(s: dict, samples: dict | None = None, out_dir=None) -> list[str]:
    v = s.get("verdict") or {}
    lines = [f"**{v['line']}**"] if v.get("line") else []
    if s["uaf_exposures"]:
        by = ", ".join(f"stream {sid} ({n})" for sid, n in sorted(s["uaf_by_sid"].items(), key=lambda kv: -kv[1])[:5])
        trace = s.get("uaf_trace") or {}
        told = trace.get("recorded") or len(trace.get("stories") or [])
        lines.append(f"{s['uaf_exposures']} UAF exposure(s), {s['uaf_reallocated']} of them to a page "
                     f"already given to another mapping; the first at {_d(s['first_uaf_s'])}; by {by}. A device "
                     "wrote through a stale ATC entry after its unmap was reported complete."
                     + (f" The story of {told} of them (the first {trace.get('max_stories', 1000):,}, and the first of "
                        f"each stream) is in uaf-trace.jsonl: `ats-stress explain {out_dir or 'DIR'} --uaf 1` prints "
                        "the first as a timeline." if told else ""))
    else:
        lines.append("No translated request reached memory after its unmap was reported complete.")
    if v.get("inaction"):
        lines.append("Why nothing was fenced: " + " ".join(v["inaction"]))
    if s["fence_count"]:
        lines.append(f"{s['fence_count']} fence(s), {s['fenced_healthy']} of a healthy device; fence latency max "
                     f"{_d(s['fence_latency_s']['max'])}; {s['unfence_count']} unfence(s) after reset, recovery max "
                     f"{_d(s['recovery_s']['max'])}; still fenced at the end: "
                     f"{', '.join(map(str, s['fenced_at_end'])) or 'none'}.")
    else:
        lines.append("No stream was fenced.")
    h = s["healthy_unmap_latency_s"]
    lines.append(f"Healthy unmaps: p50 {_d(h['p50'])}, p99 {_d(h['p99'])}, worst stall {_d(s['worst_stall_s'])}; "
                 f"{s['sync_timeouts']} software CMD_SYNC timeout(s), {s['hw_atc_timeouts']} hardware ATC_INV "
                 f"timeout(s) ({s['cmdq_errors']} CERROR_ATC_INV_SYNC); CPU lockup {_d(s['lockup_s'])}, the longest "
                 f"window with interrupts off {_d(s['irqs_off_max_s'])}, the longest time inside one flush "
                 f"{_d(s['flush_max_s'])}.")
    irq = _irq_sentence(s)
    if irq:
        lines.append(irq)
    if s.get("cmdq_full_waits"):
        lines.append(f"The command queue ({s['cmdq_entries']:,} entries) was full {s['cmdq_full_waits']} time(s): "
                     f"writers waited {_d(s['cmdq_full_wait_s'])} in all for room"
                     + (f"; {s['cmdq_dropped']} command(s) dropped after LOOP_TIMEOUT (\"Command buffer timeout\", "
                        "AMD: an invalidation never sent)" if s.get("cmdq_dropped") else "") + ".")
    story = _queue_story(samples)
    if story:
        lines.append(story)
    return lines


def write_report(sc, summary: dict, samples: dict | None, out_dir) -> list[Path]:
    """Write ``out_dir/report.md`` (and the PNG plots when there are samples); the paths written,
    report.md first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = summary
    md: list[str] = [f"# {s['scenario']} · policy {s['policy']} · {s['runtime']} runtime · seed {s['seed']}", ""]
    status = s["status"]
    held = all(e["ok"] for e in s["expectations"])
    verdict = ("all held" if s["ok"] else "all held so far (the run did not complete)" if held and status != "complete"
               else "NOT all held")
    md.append(f"Status: **{status}**; {_d(s['sim_time_s'])} of scenario time; expectations {verdict}.")
    if status == "failed" and s.get("error"):
        md += ["", f"**The run failed** at {_d(s['sim_time_s'])}: {s['error']}. The figures below cover the run "
                   "up to the failure."]
    md += ["", "## Verdict", ""] + [f"- {line}" for line in _verdict(s, samples, out_dir)]
    top = sc.topology
    md += ["", "## What the scenario did", "",
           f"{top.endpoints} ATS endpoints behind {top.smmus} SMMU(s) with {sc.hardware.command_queues} command "
           f"queue(s) each, {top.domains} domains, {top.cpus} CPUs; "
           f"{'unmaps replayed from a trace' if s.get('trace') else f'{sc.workload.unmaps_per_s:g} unmaps/s'}, "
           f"{sc.workload.dma_per_endpoint_per_s:g} DMA/s per endpoint; hardware ATC_INV completion timeout "
           f"{_d(sc.hardware.atc_inv_completion_timeout)}; policy `{s['policy']}` "
           f"{s['policy_params'] or ''}.", ""]
    if s.get("trace"):
        md += _trace_lines(s["trace"]) + [""]
    if sc.chaos:
        md += ["| step | at | fault | endpoints | until |", "|---|---|---|---|---|"]
        for i, step in enumerate(sc.chaos):
            duration = getattr(step, "duration", None)
            until = _d(float(step.at) + float(duration)) if duration else (
                "-" if step.fault == "reset" else "end of run")
            if getattr(step, "repeat", None) is not None or getattr(step, "ramp", None) is not None:
                until += " (repeated: see the plots)"
            md.append(f"| {i} | {_d(float(step.at))} | {step.fault} | {_targets(sc, samples, i)} | {until} |")
    else:
        md.append("No chaos steps.")
    md += ["", "## Fences, resets and recovery", ""]
    if s["fences"]:
        md += ["| stream | fenced at | fault began | fence latency | verdict |", "|---|---|---|---|---|"]
        for f in s["fences"]:
            md.append(f"| {f['sid']} | {_d(f['at_s'])} | {_d(f['fault_start_s'])} | {_d(f['latency_s'])} | "
                      f"{'culprit' if f['fault_start_s'] is not None else '**healthy device fenced**'} |")
    else:
        md.append("No stream was fenced.")
    if s["unfences"]:
        md += ["", "| stream | unfenced at | was fenced for | recovery (reset to unfence) |", "|---|---|---|---|"]
        for f in s["unfences"]:
            md.append(f"| {f['sid']} | {_d(f['at_s'])} | {_d(f['fenced_s'])} | {_d(f['recovery_s'])} |")
    if s["resets"]:
        md += ["", "Resets (FLR): " + "; ".join(
            f"stream {r['sid']} {'ok' if r['ok'] else 'FAILED'} ({_d(r['started_s'])} to {_d(r['done_s'])})"
            for r in s["resets"][:20]) + ("; ..." if len(s["resets"]) > 20 else "") + "."]
    un = s["unmaps"]
    a = s["affected_unmap_latency_s"]
    md += ["", "## Stall and cost", "",
           f"- unmaps completed {un['count']} of {un['arrived']} arrived ({un['incomplete']} still open at the end"
           + (f"; {un['skipped_no_mapping']:,} arrivals skipped: {SKIPPED_MEANS}" if un.get("skipped_no_mapping") else "") + ")",
           f"- healthy domains: p50 {_d(s['healthy_unmap_latency_s']['p50'])}, p99 "
           f"{_d(s['healthy_unmap_latency_s']['p99'])}, max {_d(s['healthy_unmap_latency_s']['max'])}",
           f"- affected domains: p50 {_d(a['p50'])}, p99 {_d(a['p99'])}, max {_d(a['max'])}",
           f"- translated requests: {s['translated_allowed']} reached memory, {s['translated_blocked']} blocked by a fence",
           f"- commands per unmap {_n(s['commands_per_unmap'])}, CMD_SYNCs per unmap {_n(s['syncs_per_unmap'])}"]
    md += _cost_details(s)
    if s.get("runtime") == "ray":
        lost = s.get("lost") or {}
        sat = (s.get("transport") or {}).get("saturation") or []
        md += ["", "## Live runtime", "",
               f"- actors lost: {len(lost.get('actors') or [])}, endpoints lost with them: "
               f"{len(lost.get('endpoints') or [])}, nodes lost: {len(lost.get('nodes') or [])}",
               "- transport: " + ("; ".join(map(str, sat)) if sat else "kept up with the scenario (no saturation)")]
        note = live_lockup_note(s)
        if note:
            md.append(f"- {note}")
    md += ["", "## Expectations", ""]
    if s["expectations"]:
        md += ["| expectation | bound | observed | result |", "|---|---|---|---|"]
        for e in s["expectations"]:
            md.append(f"| {e['name']} | {bound_text(e)} | {observed_text(e)} | "
                      f"{'ok' if e['ok'] else '**VIOLATED**'} |")
    else:
        md.append("The scenario sets none.")
    md += ["", "## Plots", ""]
    plots = [out / "latency.png", out / "cmdq.png", out / "endpoints.png"]
    if samples and samples.get("t"):
        for plot, path in zip((plot_latency, plot_cmdq, plot_endpoints), plots):
            plot(sc, s, samples, path)
        md += ["Shaded: chaos steps; red lines: a fence took effect; green dashed: an unfence.", "",
               "Unmap latency over time (each dot one completed unmap; the black line is the oldest unmap still "
               "waiting, so a stall shows while it grows):", "", "![unmap latency](latency.png)", "",
               "Command queues: commands queued, and each queue an unanswered CMD_SYNC wedged, from when that "
               "CMD_SYNC was queued until the queue was clear again. It clears only when the CMD_SYNC "
               "completes (the device answers, or the hardware's ATC_INV timeout gives up), so a queue can stay "
               "wedged after its device is fenced while the driver works on other queues:", "",
               "![command queues](cmdq.png)", "",
               "Endpoints by state, streams fenced, and UAF exposures:", "", "![endpoints](endpoints.png)"]
    else:
        plots = []
        md.append("This runtime gave no time series, so there are no time plots.")
    if s.get("log"):
        md += ["", "## Driver log (first lines)", "", "```"] + s["log"][:12] + ["```"]
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(path)
    return [path] + plots


#: every file a run writes into its directory, in the order ``run`` lists them. ``run`` removes
#: them before it starts, so no file of an earlier run stays beside this one's (observe's
#: prometheus.yml and prometheus-data are observe's, and stay)
RUN_FILES = ("summary.json", "uaf-trace.jsonl", "report.md", "latency.png", "cmdq.png", "endpoints.png",
             "metrics.om", "prometheus-targets.json")


def clear_run_outputs(out_dir) -> list[Path]:
    """Remove what an earlier run wrote into ``out_dir``; the paths removed."""
    removed = []
    for name in RUN_FILES:
        for path in (Path(out_dir) / name, Path(out_dir) / f"{name}.tmp"):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def run_outputs(out_dir) -> list[Path]:
    """The files of RUN_FILES in ``out_dir``: after ``clear_run_outputs``, what this run wrote."""
    return [Path(out_dir) / n for n in RUN_FILES if (Path(out_dir) / n).is_file()]


def write_run_outputs(sc, summary: dict, sampler, out_dir, err_console=None) -> list[Path]:
    """After summary.json: metrics.om (sim runs), report.md and its plots; the paths written. A
    failure here is reported in one line and never changes the run's result."""
    out = Path(out_dir)
    written: list[Path] = []
    try:
        om = sampler.write_openmetrics(out / "metrics.om") if sampler is not None else None
        if om is not None:
            written.append(om)
        written += write_report(sc, summary, sampler.samples() if sampler is not None else None, out)
    except Exception as exc:  # noqa: BLE001 - a report must never take the run's result down
        if err_console is not None:
            err_console.print(f"warning: the run report was not written: {type(exc).__name__}: {exc}",
                              highlight=False, soft_wrap=True)
    return written


#: Linux error numbers a waited sync returns, by name
_ERRNO = {"0": "0", "-110": "-ETIMEDOUT", "-5": "-EIO"}


def _trace_lines(t: dict) -> list[str]:
    """The replayed trace (summary.json's ``trace``): what was read, what was replayed, how it was mapped."""
    if "error" in t:
        return [f"Trace `{t.get('path')}`: {t['error']}"]
    skipped = ", ".join(f"{v} {k}" for k, v in t["skipped"].items()) or "none"
    rate = t["offered_per_s"]
    by = ", ".join(f"{v} by {k}" for k, v in t["mapping"]["domains_by"].items())
    out = [f"Workload: the trace `{t['name']}` ({t['format']}): {t['lines']} lines read, {t['unmap_events']} unmap "
           f"and {t['map_events']} map events, {t['skipped_lines']} lines skipped ({skipped})"
           + (f", {t['lost_events']} events the tracer lost" if t["lost_events"] else "")
           + (f", {t['reordered']} out of order across CPUs (perf script)" if t["reordered"] else "") + ".",
           f"- replayed: {t['unmaps_replayed']} unmaps ({t['pages_unmapped']} pages) at {t['speed']:g}x speed"
           + (f", {t['passes']} pass(es) (looped)" if t["loop"] else "")
           + f"; offered {_n(rate['mean'])} unmaps/s on average, {_n(rate['peak'])}/s at the peak "
           f"({_d(rate['bin_s'])} bins; the rate is plotted under the unmap latency in latency.png)",
           f"- mapping: {t['mapping']['cpu']}; domains of the file's unmaps: {by} ({t['mapping']['domain']}); pages: "
           f"{t['mapping']['pages']}"
           + (f"; {t['spans_capped']} spans cut to the domain" if t["spans_capped"] else "")
           + (f"; {t['unmaps_busy']} unmaps found every page of their span already being unmapped (flushed, "
              "nothing freed)" if t["unmaps_busy"] else "")
           + ("; so many that the trace's IOVAs crowd the domains' pages: raise topology.pages_per_domain"
              if t["unmaps_busy"] > 0.1 * max(1, t["unmaps_replayed"]) else "")]
    if t.get("unmaps_empty"):
        out.append(f"- {t['unmaps_empty']} unmap events with unmapped_size=0 were not replayed (nothing to flush)")
    return out


def _cost_details(s: dict) -> list[str]:
    """What the driver's waits returned, lazy flushing, untranslated DMA and logged event records."""
    lines = []
    returns = s.get("sync_returns") or {}
    if returns:
        lines.append("- each waited CMD_SYNC returned: " + ", ".join(
            f"{_ERRNO.get(code, code)} x{n}" for code, n in sorted(returns.items(), key=lambda kv: -kv[1])))
    flush = s.get("flush") or {}
    if flush.get("mode") == "lazy":
        per = flush.get("iovas_per_flush")
        lines.append(f"- lazy flushing: {flush['flushes']} flushes of whole domains, "
                     f"{'-' if per is None else f'{per:.3g}'} IOVAs each; {s.get('lazy_window_dma', 0)} translated "
                     "requests in lazy mode's window (after the unmap returned, before its flush): by design, not UAF")
    if (s.get("dma") or {}).get("untranslated_sent"):
        lines.append(f"- ATS disabled: {s['dma']['untranslated_sent']} untranslated requests, "
                     f"{s.get('untranslated_allowed', 0)} through the SMMU's page walk, "
                     f"{s.get('untranslated_faulted', 0)} faulted")
    records = s.get("event_records") or []
    if records:
        kinds: dict[str, set] = {}
        for r in records:
            kinds.setdefault(r["event"], set()).add(r["sid"])
        counts = s.get("smmu_events") or {}  # every record; the list itself is capped
        lines.append("- event records: " + "; ".join(
            f"{k} x{counts.get(k) or sum(r['event'] == k for r in records)} (devices {', '.join(map(str, sorted(v)))})"
            for k, v in kinds.items()))
    if s.get("resets_requested"):
        lines.append(f"- resets asked for: {s['resets_requested']} (each through the blocking domain; "
                     f"{s.get('ats_disables_deferred', 0)} waited for outstanding invalidations before the FLR)")
    return lines

