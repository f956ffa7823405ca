"""Reading a recorded IOMMU trace (``workload.trace``): the kernel's ``iommu`` trace events as ftrace,
``trace-cmd report`` and ``perf script`` print them, streamed line by line.

**What the kernel prints.** include/trace/events/iommu.h (Linux; the range form since the patch
"iommu: log iova range in map/unmap trace events", Dafna Hirschfeld, Nov 2021):

- ``TRACE_EVENT(unmap)``, recorded by ``__iommu_unmap()`` (drivers/iommu/iommu.c) after the page
  table is cleared and before ``iommu_iotlb_sync()`` flushes it:
  ``TP_printk("IOMMU: iova=0x%016llx - 0x%016llx size=%zu unmapped_size=%zu", iova, iova + size,
  size, unmapped_size)``; older kernels print ``"IOMMU: iova=0x%016llx size=%zu unmapped_size=%zu"``.
- ``TRACE_EVENT(map)``, recorded by ``iommu_map_nosync()``:
  ``TP_printk("IOMMU: iova=0x%016llx - 0x%016llx paddr=0x%016llx size=%zu", iova, iova + size,
  paddr, size)``; older kernels ``"IOMMU: iova=0x%016llx paddr=0x%016llx size=%zu"``.

iova and paddr are hexadecimal, the sizes decimal bytes. Neither event carries a device, a domain
or a group (``iommu_unmap()`` is called with a domain the event does not record): which domain an
unmap belongs to is not in the trace. A line may therefore carry an extra ``domain=N`` field
(added by whoever captured it, e.g. from the device the unmapping task serves), or the scenario maps
task names to domains (``workload.trace_domains``); otherwise unmaps are dealt over the scenario's
domains by IOVA range (``TraceMapping``). Some vendor kernels add ``dev=NAME`` after ``IOMMU:``;
it is read, and ``trace_domains`` patterns match it as well as the task name.

**The line prefixes** (what precedes ``unmap: IOMMU: ...``):

- raw ftrace (``/sys/kernel/tracing/trace``, ``trace_pipe``): ``trace_print_context()`` in
  kernel/trace/trace_output.c prints ``"%16s-%-7d "`` (task, pid), ``"(%7d) "`` with the
  record-tgid option, ``"[%03d] "`` (CPU), the irq-info flags (``d.h1.``: irqs-off, need-resched,
  hard/softirq, preempt depth, migrate-disable; four characters on older kernels, none with
  irq-info off), ``" %5lu.%06lu"`` (seconds.microseconds; a counter trace_clock prints a bare
  integer, which is refused: it is not a time) and ``": "``; then ``trace_raw_output_prep()``
  prints the event name and ``": "`` (``unmap: ``, no system name). The ``trace`` file opens with
  ``#`` comment lines; ``CPU:%d [LOST %lu EVENTS]`` and ``##### CPU %u buffer started ####``
  lines may appear.
- ``trace-cmd report`` (trace-cmd tracecmd/trace-read.c): ``"%16s-%-5d [%03d]"``, the latency
  flags, ``" %6.1000d:"`` (seconds.microseconds; ``" %9.1d:"`` with nanoseconds), then
  ``" %s: "`` with the event name padded to 20 columns; it opens with ``cpus=N`` and may print
  ``CPU:%d [%lld EVENTS DROPPED]``. ``trace-cmd report -l`` prints ``"%8.8s-%-5d %3d"`` with the
  flags right after the CPU number.
- ``perf script`` (tools/perf/builtin-script.c, the default fields of a tracepoint): ``"%16s "``
  (comm), ``"%7d "`` (tid; ``pid/tid`` with ``-F +pid``), ``"[%03d] "``, ``"%5lu.%06lu: "``,
  then the event as ``system:name`` right-aligned to the longest name, ``": "``. Its callchain
  lines (``-g``) and ``#`` header lines are skipped.

Other events' lines are skipped and counted. Anything else is an error naming the file, the line
and what was expected (``ScenarioError``: exit 2).

**Time order.** ftrace and ``trace-cmd report`` merge the per-CPU buffers in timestamp order, so a
timestamp earlier than the line before it means a damaged or concatenated file: refused. ``perf
script`` sorts through a bounded queue and may print a few events out of order across CPUs (it
says "N out of order events recorded"): those are replayed at the time the replay has reached and
counted (``reordered``). On one CPU time never goes back, in any format.

**Streaming.** ``scan()`` reads the file once, line by line (a line longer than ``MAX_LINE``
bytes is an error, so a file without newlines cannot fill memory), and keeps counters only;
``replay()`` reads it again and yields one unmap at a time. Memory does not depend on the file's
length. A gzip-compressed trace is read through gzip, also streamed.
"""

from __future__ import annotations

import fnmatch
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ats_stress.iommu_actor.commands import atc_inv_span
from ats_stress.iommu_actor.spec import ATC_INV_SIZE_ALL

from .fields import ScenarioError

#: the IOVA page the model works in: 4 KiB, the unit of an ATC_INV span (PCIe ATS, SMMUv3 ATC_INV)
PAGE_SHIFT = 12
#: a trace line longer than this is not a trace line (bytes)
MAX_LINE = 64 * 1024

FORMAT_FTRACE = "ftrace"  # /sys/kernel/tracing/trace or trace_pipe
FORMAT_TRACE_CMD = "trace-cmd report"
FORMAT_PERF = "perf script"

#: the print formats, for error messages
UNMAP_FORMAT = "IOMMU: iova=0x%016llx - 0x%016llx size=%zu unmapped_size=%zu"
MAP_FORMAT = "IOMMU: iova=0x%016llx - 0x%016llx paddr=0x%016llx size=%zu"
EXPECTED_LINE = ("an event line such as '<idle>-0 [003] ..s1. 1234.567890: unmap: IOMMU: iova=0x00000000ffffe000 "
                 "- 0x00000000fffff000 size=4096 unmapped_size=4096' (raw ftrace or trace-cmd report), or "
                 "'swapper 0 [003] 1234.567890: iommu:unmap: IOMMU: iova=...' (perf script)")
CAPTURE_HINT = ("capture with `trace-cmd record -e iommu:unmap -e iommu:map` then `trace-cmd report > FILE`, or "
                "from /sys/kernel/tracing/trace after `echo 1 > /sys/kernel/tracing/events/iommu/unmap/enable`")

# raw ftrace and trace-cmd report: task-pid [(tgid)] [cpu] [flags] secs.usecs: event: body
_FTRACE = re.compile(r"^\s*(?P<task>.*)-(?P<pid>\d+)\s+(?:\(\s*(?:\d+|-+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
                     r"(?:(?P<flags>\S+)\s+)?(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>[A-Za-z_][\w:]*):\s?(?P<body>.*)$")
# trace-cmd report -l: task(8)-pid cpu+flags secs.usecs: event: body
_TRACE_CMD_LAT = re.compile(r"^\s*(?P<task>.{0,8}?)-(?P<pid>\d+)\s+(?P<cpu>\d+)(?P<flags>[^\s\d]\S*)\s+"
                            r"(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>[A-Za-z_]\w*):\s?(?P<body>.*)$")
# perf script: comm tid[/pid] [cpu] secs.usecs: system:event: body
_PERF = re.compile(r"^\s*(?P<task>.*?)\s+(?P<pid>\d+)(?:/\d+)?\s+\[(?P<cpu>\d+)\]\s+"
                   r"(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>[A-Za-z_]\w*:[A-Za-z_]\w*):\s?(?P<body>.*)$")
_KV = re.compile(r"([A-Za-z_]\w*)=(\S+)")
_RANGE_END = re.compile(r"iova=\S+\s+-\s+(0x[0-9a-fA-F]+)")
_LOST = re.compile(r"^CPU:\s*\d+\s+\[(?:LOST\s+(?P<lost>\d+)\s+EVENTS|(?P<dropped>\d+)?\s*EVENTS DROPPED|SUBBUFFER START)\]")
_TRACE_CMD_HEAD = re.compile(r"^cpus=\d+$")  # trace-cmd report's first line
_SKIPPED_LINES = (
    re.compile(r"^CPU \d+ is empty$"),
    re.compile(r"^#+ CPU \d+ buffer started #+$"),  # ftrace, print_trace_header / test_cpu_buff_start
    re.compile(r"^\s+(?:\[?[0-9a-fA-F]{6,}\]?)\s+\S"),  # perf script -g: a callchain frame
)


class TraceError(ScenarioError):
    """A trace that cannot be replayed (a ScenarioError: bad input, exit 2)."""


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One iommu map or unmap event as printed."""

    line: int
    fmt: str
    task: str
    cpu: int
    ts_ns: int
    kind: str  # "unmap" or "map"
    iova: int
    size: int  # unmap: unmapped_size (what the flush covers); map: size
    domain: int | None  # the optional domain=N field
    dev: str | None  # the dev=NAME field of some vendor kernels


def _ts_ns(text: str, where: str) -> int:
    if "." not in text:
        raise TraceError(f"{where}: the timestamp {text} has no fraction of a second: the trace was recorded with "
                         "a counter trace_clock (x86-tsc, counter), whose values are not times. Record with the "
                         "default 'local' clock or 'global'/'mono' (echo global > /sys/kernel/tracing/trace_clock, "
                         "trace-cmd record -C global)")
    secs, frac = text.split(".", 1)
    return int(secs) * 1_000_000_000 + int((frac + "000000000")[:9])


def _int(text: str) -> int:
    return int(text, 16) if text[:2] in ("0x", "0X") else int(text, 10)


def parse_line(text: str, where: str, line: int = 0) -> TraceEvent | str:
    """An iommu map/unmap event, or the kind of line skipped ("blank", "header", "lost:N",
    "other event"); TraceError for a line that is neither."""
    stripped = text.strip()
    m = _FTRACE.match(stripped) if stripped[:1] != "#" else None
    fmt = FORMAT_FTRACE
    if m is None:
        skipped = _skipped(text, stripped)
        if skipped is not None:
            return skipped
        m = _PERF.match(stripped)
        fmt = FORMAT_PERF
    if m is None:
        m = _TRACE_CMD_LAT.match(stripped)
        fmt = FORMAT_TRACE_CMD
    if m is None:
        raise TraceError(f"{where}: not a trace line ({stripped[:80]!r}); expected {EXPECTED_LINE}")
    event = m.group("event")
    name = event.split(":", 1)[1] if ":" in event else event
    if fmt == FORMAT_PERF and not event.startswith("iommu:"):
        return "other event"
    body = m.group("body").strip()
    if name not in ("unmap", "map") or not (body.startswith("IOMMU:") or body.startswith("[FAILED TO PARSE]")):
        return "other event"  # another subsystem's event of the same name prints something else
    ts = _ts_ns(m.group("ts"), where)
    kv = dict(_KV.findall(body))
    need = ("iova", "size", "unmapped_size") if name == "unmap" else ("iova", "size")
    missing = [k for k in need if k not in kv]
    if missing:
        raise TraceError(f"{where}: an iommu {name} event without {', '.join(k + '=' for k in missing)}; expected "
                         f"'{UNMAP_FORMAT if name == 'unmap' else MAP_FORMAT}' (include/trace/events/iommu.h)")
    try:
        iova = _int(kv["iova"])
        size = _int(kv["size"])
        done = _int(kv["unmapped_size"]) if name == "unmap" else size
        domain = _int(kv["domain"]) if "domain" in kv else None
    except ValueError:
        raise TraceError(f"{where}: an iommu {name} event with a field that is not a number ({body[:100]!r}); "
                         f"expected '{UNMAP_FORMAT if name == 'unmap' else MAP_FORMAT}'") from None
    if iova >= 1 << 64 or size >= 1 << 64 or done >= 1 << 64:
        raise TraceError(f"{where}: iova or size does not fit in 64 bits ({body[:100]!r})")
    end = _RANGE_END.search(body)
    if end is not None and _int(end.group(1)) != iova + size:
        raise TraceError(f"{where}: the range end {end.group(1)} is not iova + size "
                         f"({iova:#x} + {size}); expected '{UNMAP_FORMAT if name == 'unmap' else MAP_FORMAT}'")
    return TraceEvent(line, fmt, m.group("task").strip(), int(m.group("cpu")), ts, name, iova, done, domain,
                      kv.get("dev"))


def _skipped(text: str, stripped: str) -> str | None:
    """The kind of a line that is not an event but belongs in a trace, else None."""
    if not stripped:
        return "blank"
    if stripped.startswith("#") and not stripped.startswith("####"):
        return "header"
    if _TRACE_CMD_HEAD.match(stripped):
        return "header:trace-cmd"
    m = _LOST.match(stripped)
    if m:
        return f"lost:{m.group('lost') or m.group('dropped') or 0}"
    for pat in _SKIPPED_LINES:
        if pat.match(text.rstrip("\r\n")) or pat.match(stripped):
            return "header"
    return None


# --- opening and reading, streamed -------------------------------------------------------------

_TRACE_DAT = b"\x17\x08\x44tracing"
_PERF_DATA = b"PERFILE2"
_GZIP = b"\x1f\x8b"


def _open(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TraceError(f"{path}: workload.trace: no such file. Give the path of a text trace (relative paths "
                         "are relative to the scenario file); " + CAPTURE_HINT + ".") from None
    except OSError as exc:
        raise TraceError(f"{path}: workload.trace: cannot be read ({exc.strerror}).") from None
    if not path.is_file():
        raise TraceError(f"{path}: workload.trace: is not a file.")
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise TraceError(f"{path}: workload.trace: cannot be read ({exc.strerror}).") from None
    head = f.read(4096)
    f.seek(0)
    if head.startswith(_GZIP):
        f.close()
        f = gzip.open(path, "rb")
        try:
            head = f.read(4096)
            f.seek(0)
        except (OSError, EOFError) as exc:
            f.close()
            raise TraceError(f"{path}: is not a readable gzip file ({exc}).") from None
    if head.startswith(_TRACE_DAT):
        f.close()
        raise TraceError(f"{path}: is a binary trace-cmd trace.dat; replay reads its text: "
                         f"`trace-cmd report -i {path} > {path}.txt`, then give that file.")
    if head.startswith(_PERF_DATA):
        f.close()
        raise TraceError(f"{path}: is a binary perf.data; replay reads its text: "
                         f"`perf script -i {path} > {path}.txt`, then give that file.")
    if b"\x00" in head:
        f.close()
        raise TraceError(f"{path}: is a binary file, not a text trace; " + CAPTURE_HINT + ".")
    return f, st


def _lines(f, path: Path) -> Iterator[tuple[int, str]]:
    n = 0
    while True:
        try:
            raw = f.readline(MAX_LINE + 1)
        except (OSError, EOFError) as exc:  # a truncated gzip stream
            raise TraceError(f"{path}: line {n + 1}: cannot be read ({exc}).") from None
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            raise TraceError(f"{path}: line {n} is longer than {MAX_LINE // 1024} KiB: not a trace line; expected "
                             f"{EXPECTED_LINE}")
        yield n, raw.decode("utf-8", errors="replace")


def events(path: Path) -> Iterator[TraceEvent | tuple[int, str]]:
    """Every line: a TraceEvent (with its line number) or (line number, skipped kind)."""
    f, _ = _open(path)
    with f:
        for n, text in _lines(f, path):
            got = parse_line(text, f"{path}: line {n}", n)
            yield (n, got) if isinstance(got, str) else got


# --- mapping a trace onto the topology -----------------------------------------------------------

@dataclass(frozen=True)
class TraceMapping:
    """How trace unmaps land on the scenario's topology (plain values; both runtimes use it).

    - CPU: the trace CPU modulo ``topology.cpus``.
    - Domain: the line's ``domain=N`` when it has one (``column``); else the first
      ``workload.trace_domains`` pattern (fnmatch) that matches the task name or ``dev=`` (``task``);
      else by IOVA range (``iova``): IOVA page number p goes to domain (p // pages_per_domain) mod
      domains, i.e. each range of pages_per_domain pages to the next domain, round-robin.
    - The SMMU is the domain's (domains are split evenly over the SMMUs, as ``plan.placement``).
    - Pages: the unmapped range [iova, iova + unmapped_size) covers pages p0..p1; its ATC_INV span is
      what arm_smmu_atc_inv_to_cmd() computes for them (``atc_inv_span``: the naturally aligned
      power of two 2**k pages at b that covers them). The domain's page table has pages_per_domain
      pages, so the span is folded onto it: span number (b >> k) modulo the number of whole 2**k
      spans the domain holds, i.e. slot base ((b >> k) mod (P >> k)) << k; for k = 0 that is page
      number modulo pages_per_domain. A span larger than the largest power of two in
      pages_per_domain is cut to that (``spans_capped``).
    """

    cpus: int
    domains: int
    smmus: int
    pages_per_domain: int
    patterns: tuple[tuple[str, int], ...] = ()

    def domain_of(self, ev: TraceEvent) -> tuple[int, str]:
        if ev.domain is not None:
            return ev.domain, "column"
        for pattern, dom in self.patterns:
            if fnmatch.fnmatchcase(ev.task, pattern) or (ev.dev is not None and fnmatch.fnmatchcase(ev.dev, pattern)):
                return dom, "task"
        return ((ev.iova >> PAGE_SHIFT) // self.pages_per_domain) % self.domains, "iova"

    def span(self, ev: TraceEvent) -> tuple[int, int, bool]:
        """(slot base, log2 pages, capped) of an unmap of ``ev.size`` > 0 bytes."""
        first = ev.iova >> PAGE_SHIFT
        last = (ev.iova + ev.size - 1) >> PAGE_SHIFT
        base, log2 = atc_inv_span(first, last - first + 1)
        P = self.pages_per_domain
        kmax = P.bit_length() - 1  # the largest power of two that fits in the domain
        capped = log2 > kmax or log2 >= ATC_INV_SIZE_ALL
        if capped:
            log2 = kmax
            base = first
        return ((base >> log2) % (P >> log2)) << log2, log2, capped

    def smmu_of(self, domain: int) -> tuple[int, int]:
        """(SMMU, its local index of ``domain``): domains split evenly over the SMMUs (plan._span)."""
        for s in range(self.smmus):
            lo, hi = s * self.domains // self.smmus, (s + 1) * self.domains // self.smmus
            if lo <= domain < hi:
                return s, domain - lo
        raise ValueError(f"no domain {domain}")

    def describe(self) -> dict:
        return {"cpu": f"trace CPU mod {self.cpus}",
                "domain": "domain=N on the line, else workload.trace_domains (task or dev name), else IOVA range: "
                          f"(iova >> 12) // {self.pages_per_domain} mod {self.domains}",
                "pages": f"ATC_INV span of the unmapped range (arm_smmu_atc_inv_to_cmd), folded onto the "
                         f"{self.pages_per_domain} pages of the domain"}


# --- scanning: validation and figures before the run --------------------------------------------

@dataclass
class TraceInfo:
    """What ``scan`` learns of a trace (counters only; constant size)."""

    path: str
    format: str = ""
    lines: int = 0
    unmaps: int = 0
    maps: int = 0
    unmaps_empty: int = 0  # unmapped_size 0: nothing was unmapped, so nothing is flushed
    skipped: dict[str, int] = field(default_factory=dict)
    lost_events: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    first_unmap_ns: int | None = None
    last_unmap_ns: int | None = None
    reordered: int = 0
    cpus: int = 0
    max_domain: int = -1
    max_domain_line: int = 0
    mapped_by: dict[str, int] = field(default_factory=dict)
    bytes_unmapped: int = 0
    largest_unmap: int = 0

    @property
    def span_s(self) -> float:
        return ((self.last_ns or 0) - (self.first_ns or 0)) / 1e9

    def period_ns(self) -> int:
        """trace_loop: the next pass starts one mean gap between unmaps after the last event."""
        span = (self.last_ns or 0) - (self.first_ns or 0)
        n = self.unmaps - self.unmaps_empty
        return span + (span // (n - 1) if n > 1 else 0)

    def summary(self) -> dict:
        return {"name": Path(self.path).name, "path": self.path, "format": self.format, "lines": self.lines,
                "unmap_events": self.unmaps, "map_events": self.maps, "unmaps_empty": self.unmaps_empty,
                "skipped_lines": sum(self.skipped.values()), "skipped": dict(sorted(self.skipped.items())),
                "lost_events": self.lost_events, "reordered": self.reordered, "span_s": self.span_s,
                "cpus_seen": self.cpus, "bytes_unmapped": self.bytes_unmapped, "largest_unmap": self.largest_unmap}


_SCANNED: dict[tuple, TraceInfo] = {}


def scan(path: str | Path, patterns: tuple[tuple[str, int], ...] = ()) -> TraceInfo:
    """Read the whole trace once, streamed: every line parsed and checked, counters kept.
    TraceError (exit 2) names the file, the line and what was expected. Cached per process by
    path, size, modification time and the task patterns."""
    path = Path(path)
    f, st = _open(path)
    f.close()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, patterns)
    if key in _SCANNED:
        return _SCANNED[key]
    info = TraceInfo(str(path))
    per_cpu: dict[int, int] = {}
    last_ns = None
    last_line = 0
    family = None
    trace_cmd = False
    probe = TraceMapping(1, 1, 1, 1, patterns)
    for item in events(path):
        if isinstance(item, tuple):
            n, kind = item
            info.lines = n
            if kind.startswith("lost:"):
                info.lost_events += int(kind[5:])
                kind = "lost events"
            elif kind == "header:trace-cmd":
                trace_cmd, kind = True, "header"
            info.skipped[kind] = info.skipped.get(kind, 0) + 1
            continue
        ev = item
        info.lines = ev.line
        where = f"{path}: line {ev.line}"
        fam = "perf" if ev.fmt == FORMAT_PERF else "ftrace"
        if family is None:
            family = fam
            info.format = FORMAT_TRACE_CMD if trace_cmd and ev.fmt == FORMAT_FTRACE else ev.fmt
        elif fam != family:
            raise TraceError(f"{where}: a {ev.fmt} line in a {info.format} trace: two traces joined into one "
                             "file? Give one capture per file.")
        before = per_cpu.get(ev.cpu)
        if before is not None and ev.ts_ns < before:
            raise TraceError(f"{where}: time goes back on CPU {ev.cpu} ({_s(ev.ts_ns)} s after {_s(before)} s "
                             "earlier on that CPU); a CPU's events are in time order in every format. The file "
                             "is damaged or joined from several captures.")
        per_cpu[ev.cpu] = ev.ts_ns
        if last_ns is not None and ev.ts_ns < last_ns:
            if family == "perf":
                info.reordered += 1  # perf script's bounded reordering (see the module docstring)
            else:
                raise TraceError(f"{where}: time goes back ({_s(ev.ts_ns)} s after {_s(last_ns)} s on line "
                                 f"{last_line}); {info.format} prints events in time order across CPUs, so the "
                                 "file is damaged or joined from several captures.")
        else:
            last_ns, last_line = ev.ts_ns, ev.line
        if info.first_ns is None:
            info.first_ns = ev.ts_ns
        info.last_ns = max(info.last_ns or ev.ts_ns, ev.ts_ns)
        if ev.kind == "map":
            info.maps += 1
            continue
        info.unmaps += 1
        if ev.size == 0:
            info.unmaps_empty += 1
            continue
        if info.first_unmap_ns is None:
            info.first_unmap_ns = ev.ts_ns
        info.last_unmap_ns = ev.ts_ns
        info.bytes_unmapped += ev.size
        info.largest_unmap = max(info.largest_unmap, ev.size)
        if ev.domain is not None and ev.domain > info.max_domain:
            info.max_domain, info.max_domain_line = ev.domain, ev.line
        how = probe.domain_of(ev)[1]
        info.mapped_by[how] = info.mapped_by.get(how, 0) + 1
    info.cpus = len(per_cpu)
    if info.lines == 0:
        raise TraceError(f"{path}: is empty; expected a text trace of iommu unmap events ({CAPTURE_HINT}).")
    if info.unmaps == 0:
        said = ", ".join(f"{v} {k}" for k, v in sorted(info.skipped.items())) or "no event lines"
        raise TraceError(f"{path}: has no iommu unmap event in its {info.lines} line(s) ({said}"
                         f"{f', {info.maps} map events' if info.maps else ''}); expected lines ending in "
                         f"'unmap: {UNMAP_FORMAT}' ({CAPTURE_HINT}).")
    if info.unmaps == info.unmaps_empty:
        raise TraceError(f"{path}: every one of its {info.unmaps} unmap events has unmapped_size=0 (nothing was "
                         "unmapped, so nothing is flushed): nothing to replay.")
    if len(_SCANNED) > 16:
        _SCANNED.clear()
    _SCANNED[key] = info
    return info


def _s(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


# --- what the runtimes replay ------------------------------------------------------------------

@dataclass(frozen=True)
class TraceSpec:
    """Everything a runtime needs to replay a trace, in plain values (the plan builds it)."""

    path: str
    mapping: TraceMapping
    speed: float
    loop: bool
    duration: float
    first_ns: int
    period_ns: int
    bin_s: float  # the offered rate is counted in bins of this many scenario seconds


#: the offered rate's bin widths (scenario s): the smallest that gives at most ~400 bins
_BINS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class ReplayUnmap:
    """One unmap to hand to SMMU ``smmu``'s node: ``SmmuNode.replay_unmap(at, cpu, dom, base, log2)``."""

    at: float
    smmu: int
    cpu: int
    dom: int
    base: int
    log2: int
    capped: bool


def replay(spec: TraceSpec, smmu: int | None = None) -> Iterator[ReplayUnmap]:
    """The trace's unmaps in replay order (of SMMU ``smmu`` only, or all), one at a time, on
    scenario time: (timestamp - the first event's) / trace_speed, pass after pass with trace_loop,
    until the scenario's duration. Reads the file as it goes; never more than one line in memory."""
    m = spec.mapping
    passes = 0
    last = 0.0
    path = Path(spec.path)
    while True:
        offset = passes * spec.period_ns
        for item in events(path):
            if isinstance(item, tuple) or item.kind != "unmap" or item.size == 0:
                continue
            at = (item.ts_ns - spec.first_ns + offset) / 1e9 / spec.speed
            if at < last:
                at = last  # perf script's reordering: replayed when the replay has got there
            if at >= spec.duration:
                return
            last = at
            dom, _ = m.domain_of(item)
            s, local = m.smmu_of(dom)
            if smmu is not None and s != smmu:
                continue
            base, log2, capped = m.span(item)
            yield ReplayUnmap(at, s, item.cpu % m.cpus, local, base, log2, capped)
        passes += 1
        if not spec.loop or spec.period_ns <= 0:
            return


def passes(spec: TraceSpec) -> int:
    """How many passes over the trace the run began (trace_loop)."""
    if not spec.loop or spec.period_ns <= 0:
        return 1
    per = spec.period_ns / 1e9 / spec.speed
    k = int(spec.duration // per)
    return k + 1 if k * per < spec.duration else k


def build_spec(sc, patterns: tuple[tuple[str, int], ...] | None = None) -> tuple[TraceSpec, TraceInfo]:
    """The replay spec of a scenario with ``workload.trace`` (scanning the file: TraceError if bad)."""
    w, top = sc.workload, sc.topology
    patterns = tuple(w.trace_domains.items()) if patterns is None else patterns
    info = scan(w.trace, patterns)
    if info.max_domain >= top.domains:
        raise TraceError(f"{w.trace}: line {info.max_domain_line}: domain={info.max_domain}, but the scenario has "
                         f"{top.domains} domains (0..{top.domains - 1}); change topology.domains or the trace's "
                         "domain column.")
    if w.trace_loop and info.period_ns() <= 0:
        raise TraceError(f"{w.trace}: workload.trace_loop: every event has the same timestamp, so a pass takes no "
                         "time and the loop would never advance; replay it once (trace_loop: false).")
    mapping = TraceMapping(top.cpus, top.domains, top.smmus, top.pages_per_domain, patterns)
    bin_s = next((b for b in _BINS if b >= sc.duration / 400.0), sc.duration / 400.0)  # at most ~400 bins
    spec = TraceSpec(str(Path(w.trace)), mapping, w.trace_speed, w.trace_loop, sc.duration, info.first_ns or 0,
                     info.period_ns(), bin_s)
    return spec, info


def trace_summary(spec: TraceSpec, info: TraceInfo, nodes: list[dict]) -> dict:
    """summary.json's ``trace``: the file (``scan``), the mapping, what the nodes replayed, and the
    offered unmap rate over time (unmaps handed to the nodes per scenario second, per bin)."""
    out = info.summary()
    bins: dict[int, int] = {}
    replayed = busy = capped = pages = 0
    for n in nodes:
        r = n.get("replay") or {}
        replayed += r.get("unmaps", 0)
        busy += r.get("busy", 0)
        capped += r.get("capped", 0)
        pages += r.get("pages", 0)
        for k, v in (r.get("offered") or {}).items():
            bins[int(k)] = bins.get(int(k), 0) + v
    nb = max(1, int(-(-spec.duration // spec.bin_s)))
    offered = [bins.get(i, 0) / spec.bin_s for i in range(nb)]
    out.update({
        "speed": spec.speed, "loop": spec.loop, "passes": passes(spec),
        "unmaps_replayed": replayed, "pages_unmapped": pages, "unmaps_busy": busy, "spans_capped": capped,
        "mapping": {**spec.mapping.describe(), "domains_by": dict(sorted(info.mapped_by.items())),
                    "trace_domains": {p: d for p, d in spec.mapping.patterns}},
        "offered_per_s": {"bin_s": spec.bin_s, "rate": offered,
                          "mean": replayed / spec.duration if spec.duration else None,
                          "peak": max(offered, default=0.0)},
    })
    return out


def offered_rate(sc) -> float:
    """The unmaps per scenario second the workload offers on average: ``workload.unmaps_per_s``,
    or a replayed trace's mean rate (its replayable unmaps over its span, times trace_speed)."""
    w = sc.workload
    if w.trace is None:
        return w.unmaps_per_s
    _, info = build_spec(sc)
    n = info.unmaps - info.unmaps_empty
    per = info.period_ns() / 1e9 if w.trace_loop else info.span_s
    return (n / per if per > 0 else n / sc.duration) * w.trace_speed
