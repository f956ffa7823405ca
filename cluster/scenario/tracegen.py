"""Generated IOMMU traces, in the kernel's exact print formats: the library's example traces and the tests'.

These traces are **generated, not captured on a machine**. Each follows a documented pattern from
a fixed seed, and is written the way raw ftrace, ``trace-cmd report`` or ``perf script`` print the
``iommu:map`` / ``iommu:unmap`` events (see ``trace.py`` for the formats and their sources).

- ``nic``: a NIC's receive path in NAPI. Each of ``queues`` RX queues (queue q on CPU 2q) alternates
  bursts of traffic (on 20-60 ms) and quiet (10-40 ms). During a burst its interrupt fires about
  every 2 ms (exponential gaps, interrupt moderation); each NAPI poll completes 4-24 buffers, and for
  each the driver unmaps the 4 KiB RX buffer and maps a fresh one into the same ring slot (the IOVA
  comes straight back from the IOVA allocator's per-CPU cache, so the slot keeps its IOVA; the page
  is new). Events in one poll are 0.4-1.2 us apart, in softirq context (``..s1.``) of whatever task
  the interrupt landed on (mostly ``<idle>-0``, sometimes ``ksoftirqd/N``). IOVAs: each queue's
  ring of 256 pages, allocated top-down below 4 GiB as dma-iommu's allocator does.
- ``nvme``: fio with ``jobs`` jobs (job j on CPU j), each submitting random reads of 64-128 KiB
  at ``iops`` per second (exponential gaps, like fio's ``rate_iops``). A read is mapped when fio
  submits it (task ``fio``) and unmapped in the NVMe completion interrupt on the same CPU (hardirq
  context, ``d.h1.``; the task is whichever ran) 80-400 us later; its IOVA is aligned to 128 KiB,
  the next power of two of its size (dma-iommu rounds allocations up to a power of two).

``python -m ats_stress.cluster.scenario.tracegen`` regenerates the two example traces shipped in
``configs/traces/`` (a test checks they are what this module writes).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .trace import FORMAT_FTRACE, FORMAT_PERF, FORMAT_TRACE_CMD

#: where the library's traces live (shipped as package data)
TRACES = Path(__file__).resolve().parents[2] / "configs" / "traces"
#: the uptime (s) of the generated machine when the capture begins
T0 = 5123.0


@dataclass(frozen=True)
class Event:
    ts_ns: int
    cpu: int
    task: str
    pid: int
    flags: str
    kind: str  # "map" or "unmap"
    iova: int
    size: int
    paddr: int = 0


def nic(seed: int = 1, duration: float = 0.25, queues: int = 2, ring: int = 256) -> list[Event]:
    """The NIC pattern (module docstring), ``duration`` seconds of it."""
    rng = random.Random(f"nic:{seed}")
    out: list[Event] = []
    top = 0x1_0000_0000
    for q in range(queues):
        cpu = 2 * q
        base = top - (q + 1) * ring * 4096  # each queue's ring, top-down below 4 GiB
        head = 0
        t = rng.uniform(0, 0.01)
        on_until = t + rng.uniform(0.020, 0.060)
        page = 0x8_0000_0000 + q * 0x1000_0000
        while t < duration:
            if t >= on_until:  # quiet, then the next burst
                t += rng.uniform(0.010, 0.040)
                on_until = t + rng.uniform(0.020, 0.060)
                continue
            task, pid = ("<idle>", 0) if rng.random() < 0.8 else (f"ksoftirqd/{cpu}", 14 + 6 * cpu)
            ts = int((T0 + t) * 1e9)
            for _ in range(rng.randint(4, 24)):
                iova = base + head * 4096
                head = (head + 1) % ring
                out.append(Event(ts, cpu, task, pid, "..s1.", "unmap", iova, 4096))
                ts += rng.randint(400, 1200)
                page += 4096
                out.append(Event(ts, cpu, task, pid, "..s1.", "map", iova, 4096, page))
                ts += rng.randint(400, 1200)
            t += rng.expovariate(1 / 0.002)
    out.sort(key=lambda e: (e.ts_ns, e.cpu))
    return [e for e in out if e.ts_ns < int((T0 + duration) * 1e9)]


def nvme(seed: int = 2, duration: float = 0.25, jobs: int = 4, iops: float = 1000.0) -> list[Event]:
    """The NVMe pattern (module docstring), ``duration`` seconds of it."""
    rng = random.Random(f"nvme:{seed}")
    out: list[Event] = []
    end = int((T0 + duration) * 1e9)
    for j in range(jobs):
        cpu, pid = j, 4100 + j
        area = 0xF000_0000 - j * 0x0100_0000  # each job's IOVA area: 128 holes of 128 KiB, in turn
        hole = 0
        t = int((T0 + rng.uniform(0, 0.001)) * 1e9)
        while t < end:
            size = rng.choice((16, 20, 24, 28, 32)) * 4096
            iova = area + hole * 128 * 1024  # aligned to 128 KiB: the next power of two of 64-128 KiB
            hole = (hole + 1) % 128
            out.append(Event(t, cpu, "fio", pid, "....1", "map", iova, size,
                             0x20_0000_0000 + rng.randrange(1 << 20) * 4096))
            done = t + rng.randint(80_000, 400_000)  # the completion interrupt unmaps it
            task, tpid = ("fio", pid) if rng.random() < 0.6 else ("<idle>", 0)
            out.append(Event(done, cpu, task, tpid, "d.h1.", "unmap", iova, size))
            t += int(rng.expovariate(iops) * 1e9)
    out.sort(key=lambda e: (e.ts_ns, e.cpu))
    return [e for e in out if e.ts_ns < end]


def nic_rate(seed: int, duration: float, unmaps: int, cpus: int = 4) -> Iterator[Event]:
    """A steady stream for tests: ``unmaps`` 4 KiB unmaps evenly over ``duration`` seconds,
    round-robin over ``cpus`` CPUs, each IOVA a page of its own (generated lazily: any length)."""
    rng = random.Random(f"rate:{seed}")
    for i in range(unmaps):
        ts = int((T0 + i * duration / unmaps) * 1e9)
        iova = 0xFFFF_F000 - (i % 65536) * 4096
        cpu = i % cpus
        yield Event(ts, cpu, "<idle>", 0, "..s1.", "unmap", iova, 4096 * (1 + (rng.random() < 0.1)))


def body(e: Event) -> str:
    """The TP_printk output of include/trace/events/iommu.h (the range form)."""
    if e.kind == "unmap":
        return f"IOMMU: iova=0x{e.iova:016x} - 0x{e.iova + e.size:016x} size={e.size} unmapped_size={e.size}"
    return f"IOMMU: iova=0x{e.iova:016x} - 0x{e.iova + e.size:016x} paddr=0x{e.paddr:016x} size={e.size}"


def _time(ts_ns: int) -> str:
    return f"{ts_ns // 1_000_000_000:5d}.{ts_ns % 1_000_000_000 // 1000:06d}"


def line(e: Event, fmt: str) -> str:
    """One event as ``fmt`` prints it (trace.py's docstring gives each format's source)."""
    if fmt == FORMAT_FTRACE:  # trace_print_context + trace_raw_output_prep
        return f"{e.task:>16}-{e.pid:<7} [{e.cpu:03d}] {e.flags} {_time(e.ts_ns)}: {e.kind}: {body(e)}"
    if fmt == FORMAT_TRACE_CMD:  # trace-read.c: "%16s-%-5d [%03d]", latency, " %6.1000d:", " %s: " padded to 20
        return (f"{e.task:>16}-{e.pid:<5} [{e.cpu:03d}] {e.flags} {_time(e.ts_ns)}: {e.kind}: "
                f"{' ' * (20 - len(e.kind))}{body(e)}")
    if fmt == FORMAT_PERF:  # builtin-script.c: "%16s %7d [%03d] %12s: %*s: " (name width: iommu:unmap)
        comm = "swapper" if e.pid == 0 else e.task
        return f"{comm:>16} {e.pid:>7} [{e.cpu:03d}] {_time(e.ts_ns):>12}: {'iommu:' + e.kind:>11}: {body(e)}"
    raise ValueError(f"unknown trace format {fmt!r}")


def header(fmt: str, note: str, entries: int, cpus: int = 8) -> list[str]:
    """The lines a capture opens with, after a '#' line that says the trace is generated."""
    out = [f"# GENERATED, not captured: {note}"]
    if fmt == FORMAT_FTRACE:  # /sys/kernel/tracing/trace, print_trace_header + print_func_help_header_irq
        out += ["# tracer: nop", "#", f"# entries-in-buffer/entries-written: {entries}/{entries}   #P:{cpus}", "#",
                "#                                _-----=> irqs-off/BH-disabled",
                "#                               / _----=> need-resched",
                "#                              | / _---=> hardirq/softirq",
                "#                              || / _--=> preempt-depth",
                "#                              ||| / _-=> migrate-disable",
                "#                              |||| /     delay",
                "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION",
                "#              | |         |   |||||     |         |"]
    elif fmt == FORMAT_TRACE_CMD:
        out += [f"cpus={cpus}"]
    return out


def write(path: Path, events: Iterable[Event], fmt: str, note: str, entries: int | None = None) -> Path:
    """Write ``events`` as ``fmt`` prints them (streamed: ``events`` may be a generator)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for h in header(fmt, note, entries if entries is not None else 0):
            f.write(h + "\n")
        for e in events:
            f.write(line(e, fmt) + "\n")
    return path


EXAMPLES = {
    "nic-bursts.txt": (lambda: nic(), FORMAT_FTRACE,
                       "ats_stress.cluster.scenario.tracegen.nic(seed=1, duration=0.25, queues=2): a NIC's RX "
                       "bursts of 4 KiB unmaps, raw ftrace format"),
    "nvme-fio.txt": (lambda: nvme(), FORMAT_TRACE_CMD,
                     "ats_stress.cluster.scenario.tracegen.nvme(seed=2, duration=0.25, jobs=4): fio random reads "
                     "of 64-128 KiB on an NVMe, trace-cmd report format"),
}


def write_examples(directory: Path = TRACES) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, (make, fmt, note) in EXAMPLES.items():
        evs = make()
        out.append(write(directory / name, evs, fmt, note, len(evs)))
    return out


if __name__ == "__main__":
    for p in write_examples(Path(sys.argv[1]) if len(sys.argv) > 1 else TRACES):
        print(p)
