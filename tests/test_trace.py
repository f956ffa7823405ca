"""workload.trace: replaying the kernel's iommu trace events (include/trace/events/iommu.h) as raw
ftrace, trace-cmd report and perf script print them, on the sim runtime."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from ats_stress.cluster.results.summary import deterministic_view
from ats_stress.cluster.runtime.sim import run_sim
from ats_stress.cluster.scenario import ScenarioError, load_scenario
from ats_stress.cluster.scenario import trace as tr
from ats_stress.cluster.scenario import tracegen as tg
from ats_stress.iommu_actor.policy import policy_names
from helpers import overridden

runner = CliRunner()
FORMATS = (tr.FORMAT_FTRACE, tr.FORMAT_TRACE_CMD, tr.FORMAT_PERF)

# --- the print formats, line by line ---------------------------------------------------------------

UNMAP_BODY = "IOMMU: iova=0x00000000fffe0000 - 0x00000000fffe2000 size=8192 unmapped_size=8192"
LINES = [
    # raw ftrace, v5.15+ (5 irq-info flags: ... migrate-disable), the range form of the print format
    ("ftrace", f"          <idle>-0       [003] ..s1.  5123.004345: unmap: {UNMAP_BODY}",
     ("<idle>", 3, 5123004345000, "unmap", 0xfffe0000, 8192)),
    # an older kernel: 4 flags, the form without the range
    ("ftrace-old", "     kworker/2:1-87    [002] d..1  1042.000100: unmap: IOMMU: iova=0x00000000fff00000 "
     "size=4096 unmapped_size=4096", ("kworker/2:1", 2, 1042000100000, "unmap", 0xfff00000, 4096)),
    # irq-info off (no flags), record-tgid on, a task name with a dash and digits
    ("ftrace-tgid-noflags", "   irq/45-mlx5-9-1234    (   1234) [010]  77.500000: map: IOMMU: iova=0x0000000000001000 - "
     "0x0000000000002000 paddr=0x0000000812345000 size=4096", ("irq/45-mlx5-9", 10, 77500000000, "map", 0x1000, 4096)),
    # trace-cmd report: "%16s-%-5d [%03d]", latency flags, " %6.1000d:", event name padded to 20
    ("trace-cmd", f"             fio-4101  [001] d.h1.  5123.000274: unmap:                {UNMAP_BODY}",
     ("fio", 1, 5123000274000, "unmap", 0xfffe0000, 8192)),
    # trace-cmd report -l: "%8.8s-%-5d %3d" with the flags right after the CPU
    ("trace-cmd-l", f"kworker/-1234    3d..1. 5123.000274: unmap: {UNMAP_BODY}",
     ("kworker/", 3, 5123000274000, "unmap", 0xfffe0000, 8192)),
    # perf script: comm, tid, [cpu], time, system:event right-aligned
    ("perf", f"         swapper       0 [003]  5123.004345: iommu:unmap: {UNMAP_BODY}",
     ("swapper", 3, 5123004345000, "unmap", 0xfffe0000, 8192)),
    ("perf-pid-tid-space", f"      DOM Worker  4100/4133  [000]  5123.004345:   iommu:map: IOMMU: iova=0x0000000000001000 "
     "- 0x0000000000002000 paddr=0x0000000000042000 size=4096", ("DOM Worker", 0, 5123004345000, "map", 0x1000, 4096)),
    # libtraceevent's fallback when it cannot parse the print format: the raw fields
    ("failed-to-parse", "             fio-4101  [001]  5123.000274: unmap:                [FAILED TO PARSE] "
     "iova=4294836224 size=8192 unmapped_size=8192", ("fio", 1, 5123000274000, "unmap", 0xfffe0000, 8192)),
]


@pytest.mark.parametrize("case,text,want", LINES, ids=[c[0] for c in LINES])
def test_the_kernel_print_formats_parse_in_each_tool_output(case, text, want):
    ev = tr.parse_line(text, "t: line 1")
    assert isinstance(ev, tr.TraceEvent), ev
    assert (ev.task, ev.cpu, ev.ts_ns, ev.kind, ev.iova, ev.size) == want
    assert ev.fmt == (tr.FORMAT_PERF if case.startswith("perf") else
                      tr.FORMAT_TRACE_CMD if case == "trace-cmd-l" else tr.FORMAT_FTRACE)


def test_unmap_replays_unmapped_size_and_reads_the_domain_column_and_dev():
    ev = tr.parse_line(f"  <idle>-0 [000] ..s1. 1.000000: unmap: IOMMU: dev=1f00000.nic iova=0x2000 - 0x6000 "
                       "size=16384 unmapped_size=8192 domain=3", "t: line 1")
    assert (ev.size, ev.domain, ev.dev) == (8192, 3, "1f00000.nic")


@pytest.mark.parametrize("text,kind", [
    ("", "blank"), ("# tracer: nop", "header"), ("cpus=8", "header:trace-cmd"),
    ("CPU:2 [LOST 1234 EVENTS]", "lost:1234"), ("CPU:2 [17 EVENTS DROPPED]", "lost:17"),
    ("##### CPU 2 buffer started ####", "header"),
    ("\t ffffffff81a2b3c4 __iommu_unmap+0x1a4 ([kernel.kallsyms])", "header"),  # perf script -g callchain
    ("  <idle>-0 [000] d.h2. 1.000000: sched_switch: prev_comm=a prev_pid=1 ==> next_comm=b", "other event"),
    ("  swapper 0 [000] 1.000000: sched:sched_switch: prev_comm=a", "other event"),
    ("  foo-1 [000] .... 1.000000: unmap: not the iommu event of that name", "other event"),
])
def test_lines_that_are_not_iommu_events_are_skipped_and_said_what_they_are(text, kind):
    assert tr.parse_line(text, "t: line 1") == kind


def test_the_span_is_what_arm_smmu_atc_inv_to_cmd_computes_folded_onto_the_domain():
    m = tr.TraceMapping(cpus=4, domains=4, smmus=2, pages_per_domain=64)
    ev = lambda iova, size: tr.TraceEvent(1, "ftrace", "t", 0, 0, "unmap", iova, size, None, None)  # noqa: E731
    assert m.span(ev(0x5000, 4096)) == (5, 0, False)  # page 5
    assert m.span(ev(0x41000, 4096)) == (1, 0, False)  # page 65 -> slot 65 mod 64
    # 3 pages from page 6 cross an 8-page boundary: the aligned span is 16 pages at 0
    assert m.span(ev(0x6000, 3 * 4096)) == (0, 4, False)
    assert m.span(ev(0x100000, 128 * 1024)) == (0, 5, False)  # 32 pages at page 256: span 8 of 2 -> 0
    assert m.span(ev(0x120000, 128 * 1024)) == (32, 5, False)  # page 288: span 9 -> slot 32
    assert m.span(ev(0x0, 1 << 30)) == (0, 6, True)  # 1 GiB: cut to the whole 64-page domain
    # domains by IOVA range, round-robin; domains split over the SMMUs
    assert [m.domain_of(ev(p << 12, 4096)) for p in (0, 63, 64, 200, 256)] == [
        (0, "iova"), (0, "iova"), (1, "iova"), (3, "iova"), (0, "iova")]
    assert [m.smmu_of(d) for d in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    named = tr.TraceMapping(4, 4, 1, 64, (("irq/*-mlx5*", 2), ("fio", 3)))
    e = tr.TraceEvent(1, "ftrace", "irq/45-mlx5_comp0", 0, 0, "unmap", 0, 4096, None, None)
    assert named.domain_of(e) == (2, "task")


# --- replaying: the same events in every format, and every unmap under every policy -------------------

def _events(n=300, seed=3):
    evs = tg.nic(seed=seed, duration=0.06, queues=2)
    return evs[:n]


def _scenario(tmp_path, trace_file, **over):
    data = overridden(**{"duration": 1, "topology__endpoints": 8, "topology__domains": 4, "topology__cpus": 4,
                         "topology__endpoints_per_actor": 8, "workload__trace": str(trace_file), **over})
    data["workload"].pop("unmaps_per_s")
    p = tmp_path / "trace-scenario.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_a_raw_ftrace_and_a_trace_cmd_report_and_perf_script_of_the_same_events_replay_to_the_same_summary(tmp_path):
    evs = _events()
    summaries = {}
    for fmt in FORMATS:
        path = tg.write(tmp_path / f"{fmt.replace(' ', '-')}.txt", evs, fmt, "test", len(evs))
        sc = load_scenario(_scenario(tmp_path, path, chaos=[{"at": 0.02, "fault": "hang", "endpoints": [3],
                                                             "duration": 0.5}]))
        summaries[fmt] = s = deterministic_view(run_sim(sc))
        assert s["trace"]["format"] == fmt
    same = lambda s: {k: v for k, v in s.items() if k != "trace"}  # noqa: E731
    identity = ("name", "path", "format", "lines", "skipped_lines", "skipped")
    first = summaries[tr.FORMAT_FTRACE]
    assert first["trace"]["unmaps_replayed"] == sum(e.kind == "unmap" for e in evs) > 100
    for fmt in FORMATS[1:]:
        assert same(summaries[fmt]) == same(first), fmt
        assert {k: v for k, v in summaries[fmt]["trace"].items() if k not in identity} == \
            {k: v for k, v in first["trace"].items() if k not in identity}


@pytest.mark.parametrize("policy", policy_names())
def test_2000_unmaps_over_2s_fault_free_complete_2000_unmaps_under_every_policy(tmp_path, policy):
    path = tg.write(tmp_path / "rate.txt", tg.nic_rate(seed=1, duration=2.0, unmaps=2000), tr.FORMAT_FTRACE, "test")
    sc = load_scenario(_scenario(tmp_path, path, duration=2.5, policy={"name": policy}))
    s = run_sim(sc)
    assert s["status"] == "complete"
    assert s["unmaps"]["count"] == 2000 and s["unmaps"]["incomplete"] == 0
    assert s["trace"]["unmaps_replayed"] == 2000 and s["trace"]["unmap_events"] == 2000
    assert s["uaf_exposures"] == 0 and s["fence_count"] == 0
    assert s["trace"]["pages_unmapped"] > 2000  # a tenth of them are 2 pages


def test_a_multi_page_unmap_frees_every_mapped_page_of_its_span_after_one_flush_that_covers_them(tmp_path):
    from ats_stress.cluster.scenario.plan import build_plan
    from ats_stress.cluster.runtime.sim import SimWorld

    path = tg.write(tmp_path / "one.txt", [tg.Event(int(1e9), 0, "fio", 7, "d.h1.", "unmap", 0x10000, 5 * 4096)],
                    tr.FORMAT_FTRACE, "test")
    sc = load_scenario(_scenario(tmp_path, path, topology__pages_per_domain=32, host={"flush": "strict"}))
    world = SimWorld(build_plan(sc))
    world.start()
    node = world.nodes[0]
    before = {s: node.domains[d].pt[s] for d in range(4) for s in range(16, 24)}
    world.loop.run(0.5)
    atc = [c for c in node.smmu.cmd_counts]  # noqa: F841 (counted below)
    # pages 16..20 (5 pages from page 16): span 8 pages at 16 (ATC_INV size 3); domain (16 // 32) mod 4 = 0
    d = node.domains[0]
    assert all(d.pt[s] is not None and d.pt[s] != before[s] for s in range(16, 24))  # freed and mapped anew
    assert node.replay["pages"] == 8 and node.replay["unmaps"] == 1
    assert node.smmu.cmd_counts[0x40] == len(d.spec.sids)  # one ATC_INV per master, covering the span


def test_the_sim_keeps_one_trace_unmap_pending(tmp_path):
    from ats_stress.cluster.runtime.replay import SimReplay

    path = tg.write(tmp_path / "rate.txt", tg.nic_rate(seed=1, duration=1.0, unmaps=400), tr.FORMAT_FTRACE, "test")
    sc = load_scenario(_scenario(tmp_path, path))
    pending = []
    run_sim(sc, progress_every=0.05, progress=lambda t, w: pending.append(
        sum(1 for e in w.loop.heap if getattr(e[2], "__func__", None) is SimReplay._fire)))
    assert max(pending) == 1


def test_trace_speed_and_trace_loop(tmp_path):
    path = tg.write(tmp_path / "rate.txt", tg.nic_rate(seed=1, duration=0.5, unmaps=100), tr.FORMAT_FTRACE, "test")
    once = run_sim(load_scenario(_scenario(tmp_path, path)))
    fast = run_sim(load_scenario(_scenario(tmp_path, path, workload__trace_speed=2.0)))
    looped = run_sim(load_scenario(_scenario(tmp_path, path, workload__trace_loop=True)))
    assert once["trace"]["unmaps_replayed"] == fast["trace"]["unmaps_replayed"] == 100
    assert max(p for p in fast["trace"]["offered_per_s"]["rate"]) > max(once["trace"]["offered_per_s"]["rate"])
    # a pass is 0.5 s (the span plus one mean gap): two passes in the 1 s run
    assert looped["trace"]["passes"] == 2 and looped["trace"]["unmaps_replayed"] == 200


def test_domains_by_column_and_by_task_name(tmp_path):
    evs = [tg.Event(int(1e9) + i * 1000, 0, "fio" if i % 2 else "nic", 1, "....", "unmap", i << 12, 4096)
           for i in range(40)]
    path = tg.write(tmp_path / "t.txt", evs, tr.FORMAT_FTRACE, "test")
    s = run_sim(load_scenario(_scenario(tmp_path, path, workload__trace_domains={"fio": 3})))
    assert s["trace"]["mapping"]["domains_by"] == {"iova": 20, "task": 20}
    text = path.read_text().replace("unmapped_size=4096", "unmapped_size=4096 domain=2")
    path.write_text(text)
    s = run_sim(load_scenario(_scenario(tmp_path, path, workload__trace_domains={"fio": 3})))
    assert s["trace"]["mapping"]["domains_by"] == {"column": 40}


def test_a_relative_trace_path_is_relative_to_the_scenario_file_and_a_set_one_to_the_working_dir(tmp_path, monkeypatch):
    d = tmp_path / "scen"
    d.mkdir()
    tg.write(d / "t.txt", _events(50), tr.FORMAT_FTRACE, "test")
    p = _scenario(d, "t.txt")
    monkeypatch.chdir(tmp_path)
    assert load_scenario(p).workload.trace == str((d / "t.txt").resolve())
    assert load_scenario(p, ["workload.trace=scen/t.txt"]).workload.trace == str((d / "t.txt").resolve())


def test_the_shipped_traces_are_what_the_generator_writes(tmp_path):
    tg.write_examples(tmp_path)
    for name in tg.EXAMPLES:
        assert (tmp_path / name).read_bytes() == (tg.TRACES / name).read_bytes(), name
        assert (tg.TRACES / name).read_text().startswith("# GENERATED, not captured")


# --- hostile traces ---------------------------------------------------------------------------------

GOOD = "  <idle>-0 [000] ..s1. 100.000000: unmap: IOMMU: iova=0x1000 - 0x2000 size=4096 unmapped_size=4096\n"
HOSTILE = [
    ("empty", "", ["is empty"]),
    ("header-only", "# tracer: nop\n#\n", ["no iommu unmap event", "2 line(s)"]),
    ("maps-only", GOOD.replace("unmap:", "map:").replace("unmapped_size=4096", "paddr=0x5000"),
     ["no iommu unmap event", "1 map events"]),
    ("garbage-line", GOOD + "hello world\n" + GOOD, ["line 2", "not a trace line", "expected"]),
    ("time-goes-back", GOOD.replace("100.0", "101.0").replace("[000]", "[001]") + GOOD,
     ["line 2", "time goes back", "ftrace prints events in time order"]),
    ("time-back-on-a-cpu-in-perf", "  swapper 0 [000] 100.5: iommu:unmap: IOMMU: iova=0x1000 size=4096 unmapped_size=4096\n"
     "  swapper 0 [000] 100.1: iommu:unmap: IOMMU: iova=0x1000 size=4096 unmapped_size=4096\n",
     ["line 2", "time goes back on CPU 0"]),
    ("counter-clock", GOOD.replace("100.000000", "1234567890"), ["line 1", "counter trace_clock"]),
    ("unmap-without-size", GOOD.replace(" size=4096", ""), ["line 1", "without size=", "unmapped_size=%zu"]),
    ("range-end-wrong", GOOD.replace("0x2000", "0x3000"), ["line 1", "range end"]),
    ("not-a-number", GOOD.replace("size=4096 ", "size=lots "), ["line 1", "not a number"]),
    ("nothing-unmapped", GOOD.replace("unmapped_size=4096", "unmapped_size=0"), ["unmapped_size=0"]),
    ("trace-dat", b"\x17\x08\x44tracing6\x00\x00", ["trace.dat", "trace-cmd report -i"]),
    ("perf-data", b"PERFILE2\x00\x00\x00", ["perf.data", "perf script -i"]),
    ("binary", b"\x7fELF\x02\x01\x01\x00" * 10, ["binary file"]),
    ("line-without-end", b"x" * (tr.MAX_LINE + 10), ["line 1 is longer than 64 KiB"]),
    ("two-formats", GOOD + "  swapper 0 [000] 100.5: iommu:unmap: IOMMU: iova=0x1000 size=4096 unmapped_size=4096\n",
     ["line 2", "perf script line in a ftrace trace"]),
    ("domain-column-out-of-range", GOOD.replace("unmapped_size=4096", "unmapped_size=4096 domain=9"),
     ["line 1", "domain=9", "4 domains"]),
]


@pytest.mark.parametrize("case,content,needles", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_a_hostile_trace_exits_2_naming_the_file_and_line_without_a_traceback(tmp_path, case, content, needles):
    t = tmp_path / "bad.txt"
    (t.write_bytes if isinstance(content, bytes) else t.write_text)(content)
    p = _scenario(tmp_path, t)
    for command in (["validate", str(p)], ["run", str(p), "-q", "--out", str(tmp_path / "o")]):
        r = runner.invoke(app, command)
        assert r.exit_code == 2, (case, r.output)
        flat = " ".join(r.output.split())
        assert "Traceback" not in r.output
        assert str(t) in r.output.replace("\n", "") or str(t) in flat, r.output
        for needle in needles:
            assert needle in flat, (case, needle, r.output)


@pytest.mark.parametrize("over,needles", [
    ({"workload__trace": "nowhere.txt"}, ["nowhere.txt", "no such file"]),
    ({"workload__trace_speed": 2.0}, ["workload.trace_speed", "set workload.trace too"]),
    ({"workload__trace_domains": {"fio": 7}, "workload__trace": "t.txt"}, ["trace_domains", "'fio' maps to domain 7"]),
    ({"workload__trace": "t.txt", "chaos": [{"at": 0.5, "fault": "storm", "factor": 2, "duration": 0.1}]},
     ["chaos.0", "storm", "trace_speed"]),
    ({"workload__trace": ".", "workload__trace_loop": True}, ["is not a file"]),
])
def test_hostile_trace_settings_exit_2(tmp_path, over, needles):
    tg.write(tmp_path / "t.txt", _events(20), tr.FORMAT_FTRACE, "test")
    data = overridden(duration=1, **over)
    if isinstance(data["workload"].get("trace"), str):
        data["workload"]["trace"] = str(tmp_path / data["workload"]["trace"])
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    flat = " ".join(r.output.split())
    for needle in needles:
        assert needle in flat, (needle, r.output)


def test_every_timestamp_equal_with_trace_loop_is_refused(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text(GOOD * 3)
    with pytest.raises(ScenarioError, match="never advance"):
        load_scenario(_scenario(tmp_path, t, workload__trace_loop=True))


# --- streaming: memory does not grow with the trace's length ------------------------------------------

def _peak(path: Path) -> int:
    sc = load_scenario(_scenario(path.parent, path, duration=1000))
    from ats_stress.cluster.scenario.trace import build_spec, replay

    gc.collect()
    tracemalloc.start()
    try:
        tr._SCANNED.clear()
        spec, info = build_spec(sc)
        n = sum(1 for _ in replay(spec))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == info.unmaps
    return peak


def test_peak_memory_does_not_grow_with_the_trace_length(tmp_path):
    """A trace ten times longer (1,000 vs 10,000 lines) is scanned and replayed in the same memory:
    the reader keeps one line and counters, never the file (tracemalloc makes this slow: keep it small)."""
    small = tg.write(tmp_path / "small.txt", tg.nic_rate(seed=1, duration=10.0, unmaps=1_000), tr.FORMAT_FTRACE, "t")
    large = tg.write(tmp_path / "large.txt", tg.nic_rate(seed=1, duration=100.0, unmaps=10_000), tr.FORMAT_FTRACE, "t")
    assert large.stat().st_size > 9 * small.stat().st_size
    p_small, p_large = _peak(small), _peak(large)
    assert p_large < p_small * 1.5 + 64 * 1024, (p_small, p_large)


# --- compare and explore carry the trace ------------------------------------------------------------

def test_compare_replays_the_trace_under_each_policy_and_explore_keeps_it_while_varying_faults(tmp_path):
    path = tg.write(tmp_path / "rate.txt", tg.nic_rate(seed=1, duration=1.0, unmaps=300), tr.FORMAT_FTRACE, "test")
    scen = _scenario(tmp_path, path, duration=2, workload__trace_loop=True, workload__dma_per_endpoint_per_s=500,
                     chaos=[{"at": 0.2, "fault": "hang", "endpoints": [1], "duration": 1.5}],
                     explore={"faults": ["hang"], "settle": "0.2s", "at": ["0.1s", "0.2s"],
                              "fault_duration": ["1.5s", "1.6s"]})
    r = runner.invoke(app, ["compare", str(scen), "--policies", "arm-smmu-v3,fence-on-timeout", "--workers", "1",
                            "-q", "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    runs = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert {x["policy"] for x in runs} == {"arm-smmu-v3", "fence-on-timeout"}
    assert all(x["trace"]["name"] == "rate.txt" and x["trace"]["unmaps_replayed"] == x["unmaps"]["arrived"] >= 600
               for x in runs)
    assert {x["policy"]: x["uaf_exposures"] > 0 for x in runs} == {"arm-smmu-v3": True, "fence-on-timeout": False}
    # mainline leaks under a 1 s hang: explore finds it with the trace's workload, and the minimal
    # scenario it writes still replays that trace (shrinking slows the replay, never drops it)
    r = runner.invoke(app, ["explore", str(scen), "--policy", "arm-smmu-v3", "--budget", "1", "--check", "uaf",
                            "--shrink-runs", "3", "--workers", "1", "-q", "--out", str(tmp_path / "exp")])
    assert r.exit_code == 1, r.output
    minimal = yaml.safe_load(next((tmp_path / "exp").glob("minimal-uaf-*.yaml")).read_text())
    assert minimal["workload"]["trace"] == str(path.resolve())


def test_a_gzipped_perf_trace_with_lost_events_and_other_events_is_read_streamed_and_counted(tmp_path):
    import gzip

    a = "  swapper 0 [000] 100.000100: iommu:unmap: IOMMU: iova=0x1000 - 0x2000 size=4096 unmapped_size=4096\n"
    b = "  swapper 0 [001] 100.000050: iommu:unmap: IOMMU: iova=0x9000 - 0xa000 size=4096 unmapped_size=4096\n"
    text = ("# ========\n# captured on: x\n" + a + "CPU:1 [LOST 7 EVENTS]\n" + b
            + "  swapper 0 [000] 100.000200: sched:sched_switch: prev_comm=swapper\n" + a.replace("100.000100", "100.0003"))
    p = tmp_path / "t.txt.gz"
    with gzip.open(p, "wt") as f:
        f.write(text)
    info = tr.scan(p)
    assert (info.format, info.unmaps, info.lost_events, info.reordered) == ("perf script", 3, 7, 1)
    assert info.skipped == {"header": 2, "lost events": 1, "other event": 1}
    s = run_sim(load_scenario(_scenario(tmp_path, p)))
    assert s["trace"]["unmaps_replayed"] == s["unmaps"]["count"] == 3 and s["trace"]["reordered"] == 1
