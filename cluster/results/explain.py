"""``ats-stress explain``: the story of one UAF exposure as an ftrace-like timeline.

Reads a run directory's ``uaf-trace.jsonl`` (written by ``run``; ``iommu_actor/uaftrace.py`` says
what each story holds) and ``summary.json``, and prints one event a line, in time order, times in
seconds with microseconds, the way ``/sys/kernel/tracing/trace`` shows them: who (the unmap's task
and its CPU, the device, the SMMU), when, and what; a quotable answer to "why did this page leak?".
"""

from __future__ import annotations

import json
from pathlib import Path
from ats_stress.cluster.results.summary import UAF_TRACE_FILE

#: what a waited sync returned, by code
ERRNO = {0: "0", -110: "-ETIMEDOUT", -5: "-EIO"}


class ExplainError(Exception):
    """The run directory, or the story asked for, is not there: one paragraph for the user."""


def load(run_dir: Path) -> tuple[list[dict], dict]:
    """(the stories, summary.json or {}) of ``run_dir``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExplainError(f"{run_dir}: no such directory. Give the directory a run wrote (run's --out; by "
                           "default runs/SCENARIO-POLICY-RUNTIME).")
    path = run_dir / UAF_TRACE_FILE
    if not path.is_file():
        raise ExplainError(f"{run_dir}: no {UAF_TRACE_FILE} here. `ats-stress run` writes it beside summary.json "
                           "(a run made before the UAF trace existed has none: run it again).")
    stories = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            stories.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ExplainError(f"{path}, line {i}: not a JSON object ({exc.msg}); the file is damaged: run the "
                               "scenario again to write it afresh.") from None
    summary: dict = {}
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    return stories, summary


def pick(stories: list[dict], uaf: int | None = None, sid: int | None = None) -> dict:
    """The story ``--uaf N`` (the Nth in the trace, 1-based) or ``--sid S`` (that stream's first)."""
    if uaf is not None:
        if not 1 <= uaf <= len(stories):
            raise ExplainError(f"--uaf {uaf}: the trace holds stories 1 to {len(stories)} (the first exposures of "
                               "the run in time order, then the first of each stream).")
        return stories[uaf - 1]
    for st in stories:
        if st["sid"] == sid:
            return st
    streams = sorted({st["sid"] for st in stories})
    shown = ", ".join(map(str, streams[:20])) + (f" and {len(streams) - 20} more" if len(streams) > 20 else "")
    raise ExplainError(f"--sid {sid}: stream {sid} has no UAF exposure in this trace; the streams that have one: "
                       f"{shown}.")


def _hex(v: int) -> str:
    return f"{v:#x}"


def _code(c: int) -> str:
    return f"{c} ({ERRNO[c]})" if c in ERRNO and c else str(c)


def timeline(st: dict, summary: dict | None = None) -> list[str]:
    """The lines ``explain`` prints for story ``st``."""
    s = summary or {}
    sid, dev = st["sid"], f"dev-sid{st['sid']}"
    smmu = f"smmu{st['smmu']}"
    total = s.get("uaf_exposures")
    of = f" of {total:,}" if isinstance(total, int) else ""
    run = ", ".join(str(s[k]) for k in ("scenario", "policy", "runtime") if s.get(k))
    head = [f"# ats-stress explain: UAF {st.get('n', '?')}{of}"
            + (f" ({run}, seed {s.get('seed')})" if run else ""),
            f"# stream {sid} wrote to a page after its unmap was reported complete"
            + (f" (the first exposure of stream {sid})" if st.get("first_of_stream") else "")]
    events: list[tuple[float, str, str, str]] = []  # (time, task, cpu, text), in causal order

    def ev(t, task, cpu, text):
        if t is not None:
            events.append((t, task, cpu, text))

    device = st.get("device") or {}
    atc = st.get("atc") or {}
    ev(device.get("faulty_since_s"), dev, "---", f"fault: stream {sid} misbehaves from here (ground truth: "
                                                 "the scenario's chaos)")

    un = st.get("unmap")
    iova = st.get("iova")
    if un is None:
        head.append(f"# {st.get('note', 'the unmap that freed the page is not known')}")
    else:
        task = f"unmap-{un['id']}"
        cpu = f"{un['cpu']:03d}"
        end = iova + 4096
        head.append(f"# iova {_hex(iova)} of domain {un['domain']} (asid {un['asid']}), page {_hex(st['page'])}, "
                    f"mapping {st['mapping']}; iova = the model's IOVA page number << 12")
        ev(un["arrived_s"], task, cpu, f"dma_unmap_page: domain={un['domain']} asid={un['asid']} "
                                           f"iova={_hex(iova)} size=4096")
        if un["started_s"] is not None and un["started_s"] > un["arrived_s"]:
            waited = un["started_s"] - un["arrived_s"]
            ev(un["arrived_s"], task, cpu, f"  (waits {waited:.6f} s: CPU {un['cpu']} is inside another flush, and "
                                               "a CPU runs its flushes one at a time, to the end)")
        flush = st.get("flush")
        ev(un["started_s"], task, cpu, f"unmap: IOMMU: iova=0x{iova:016x} - 0x{end:016x} size=4096 "
                                           f"unmapped_size=4096" + ("" if flush else " (PTE cleared; iotlb_sync: TLBI, "
                                                                    "then ATC_INV to each ATS master)"))
        sync_task, sync_cpu = task, cpu
        if flush:  # lazy: dma_unmap returned at once, the IOVA waited for a flush of the whole domain
            ev(un["returned_s"], task, cpu, "dma_unmap_page: returned; the IOVA waits in the flush queue "
                                               "(lazy: the caller already has its buffer back)")
            sync_task, sync_cpu = f"flush-{flush['id']}", f"{flush['cpu']:03d}"
            ev(flush["started_s"], sync_task, sync_cpu, f"flush_iotlb_all: asid={un['asid']} (TLBI ASID, ATC_INV "
                                                           "size 52 to each ATS master)")
        for k, sync in enumerate(st.get("sync_codes") or []):
            issued, ret, code = sync["issued_s"], sync["returned_s"], sync["code"]
            if issued is not None and ret - issued > 0:
                ev(issued, sync_task, sync_cpu, f"cmd_sync: written behind its commands, the CPU spins on it (#{k + 1})")
                ev(ret, sync_task, sync_cpu, f"cmd_sync: ret={_code(code)} after {ret - issued:.6f} s (#{k + 1})")
            else:
                ev(ret, sync_task, sync_cpu, f"cmd_sync: ret={_code(code)} (#{k + 1})")
        other = " (for another page)" if atc.get("invalidation") == "not-received" else ""
        ev(atc.get("oldest_outstanding_sent_s"), smmu, "---",
           f"atc_inv: sid={sid} Invalidate Request sent{other}, still unanswered at the DMA (the oldest of "
           f"{atc.get('outstanding')} outstanding)")
        if st.get("sync_codes") is None:
            ev(st.get("flush_returned_s"), sync_task, sync_cpu, "cmd_sync: return codes not reported by this "
                                                                   "policy")
        err = (flush or un)["err"]
        ev(st.get("flush_returned_s"), sync_task, sync_cpu,
           f"{'flush_iotlb_all' if flush else 'iotlb_sync'}: ret={_code(err)}"
           + ((" (ignored: the IOVAs it covers are freed)" if err else " (the IOVAs it covers are freed)") if flush
              else (" (ignored: iotlb_sync is void; the unmap is complete)" if err else " (the unmap is complete)")))
        ev(st.get("freed_s"), sync_task, sync_cpu, f"free_page: page={_hex(st['page'])} mapping={st['mapping']}")
        to = st.get("reallocated_to")
        if to:
            ev(st.get("reallocated_s"), "alloc", "---", f"page_alloc: page={_hex(st['page'])} -> domain "
                                                             f"{to['domain']} asid={to['asid']} iova={_hex(to['iova'])} "
                                                             f"mapping={to['mapping']}")
    how = {"pending": "the device had received the Invalidate Request for it and not processed it",
           "kept": "the device had answered the Invalidate Request for it without dropping the entry",
           "not-received": "no Invalidate Request for it had reached the device"}.get(atc.get("invalidation"), "")
    q = atc.get("queued")
    if q:
        how += (f"; its ATC_INV still waited in command queue {q['queue']}, {q['ahead']} entries behind CONS"
                + (" (the queue halted by a CERROR)" if q.get("queue_halted") else ""))
    realloc = " of another mapping" if st.get("page_owner_now") is not None and \
        st.get("page_owner_now") != st["mapping"] else ""
    ev(st["dma_s"], dev, "---", f"ats_translated_write: sid={sid} iova={_hex(iova) if iova is not None else '?'} "
                                    f"page={_hex(st['page'])}{realloc}: ATC hit, {how}  <-- UAF")
    events.sort(key=lambda e: e[0])  # stable: what happened at one instant stays in causal order
    width = max([len(e[1]) for e in events] + [12])
    lines = head + ["#", f"# {'TASK'.rjust(width)}  CPU#   TIMESTAMP  EVENT",
                    f"# {'|'.rjust(width)}    |        |       |"]
    lines += [f"  {task.rjust(width)} [{cpu}] {t:12.6f}: {text}" for t, task, cpu, text in events]
    return lines


def explain_lines(run_dir: Path, uaf: int | None = None, sid: int | None = None) -> list[str]:
    """Everything ``explain`` prints, or ExplainError."""
    stories, summary = load(run_dir)
    if not stories:
        n = summary.get("uaf_exposures")
        return [f"{run_dir}: no UAF exposure in this run" + (f" (summary.json: uaf_exposures {n})" if n is not None
                                                              else "") + ": nothing to explain."]
    return timeline(pick(stories, uaf if uaf is not None or sid is not None else 1, sid), summary)


__all__ = ["ExplainError", "explain_lines", "load", "pick", "timeline"]
