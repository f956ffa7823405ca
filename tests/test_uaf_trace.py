"""Every UAF has a story (issue 24, item 2): uaf-trace.jsonl and ``ats-stress explain``."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from ats_stress.iommu_actor import uaftrace
from ats_stress.iommu_actor.spec import PAGE_SHIFT
from helpers import BASE, HANG_5, run

runner = CliRunner()


@pytest.fixture(scope="module")
def hang():
    """Mainline arm-smmu-v3, stream 5 hung from 2 s to 8 s: both kinds of UAF."""
    return run(chaos=HANG_5, duration=8)


def test_the_first_story_is_the_hung_devices_own_leak_told_from_the_unmap_to_the_dma(hang):
    st = hang["uaf_trace"]["stories"][0]
    assert (st["n"], st["sid"], st["first_of_stream"]) == (1, 5, True)
    assert st["dma_s"] == hang["first_uaf_s"]
    un = st["unmap"]
    assert st["iova"] is not None and st["iova"] % (1 << PAGE_SHIFT) == 0
    assert un["arrived_s"] <= un["started_s"] <= st["flush_returned_s"] == un["returned_s"] == st["freed_s"] < st["dma_s"]
    assert un["err"] == -110  # the flush's -ETIMEDOUT, ignored by the unmap path
    # arm_smmu_domain_inv_range(): the TLBI's CMD_SYNC returned 0, the ATC batch's -ETIMEDOUT after the 1 s poll
    codes = st["sync_codes"]
    assert [c["code"] for c in codes] == [0, -110]
    assert codes[1]["returned_s"] - codes[1]["issued_s"] == pytest.approx(1.0)
    assert codes[1]["returned_s"] == st["flush_returned_s"]
    # the hung device had the Invalidate Request and held it; the ATC hit went straight to memory
    assert st["atc"]["hit"] and st["atc"]["invalidation"] == "pending"
    assert st["atc"]["outstanding"] >= 1 and st["atc"]["oldest_outstanding_sent_s"] <= codes[1]["issued_s"] + 1e-6
    assert st["device"] == {"faulty_since_s": 2.0, "fenced": False}


def test_a_healthy_device_leaks_too_its_atc_inv_still_queued_behind_the_wedged_cmd_sync(hang):
    healthy = [st for st in hang["uaf_trace"]["stories"] if st["device"]["faulty_since_s"] is None]
    assert healthy
    for st in healthy:
        assert st["atc"]["invalidation"] == "not-received"
        assert st["atc"]["queued"] is not None and st["atc"]["queued"]["queue"] == 0
        assert st["unmap"]["err"] == -110 and st["freed_s"] < st["dma_s"]


def test_the_trace_is_every_exposure_in_dma_order_when_under_the_cap(hang):
    tr = hang["uaf_trace"]
    assert tr["exposures"] == hang["uaf_exposures"] == tr["recorded"] == len(tr["stories"]) <= tr["max_stories"]
    assert [st["n"] for st in tr["stories"]] == list(range(1, tr["recorded"] + 1))
    assert [st["dma_s"] for st in tr["stories"]] == sorted(st["dma_s"] for st in tr["stories"])
    firsts = [st["sid"] for st in tr["stories"] if st["first_of_stream"]]
    assert sorted(firsts) == sorted(map(int, hang["uaf_by_sid"]))  # one first story per stream that leaked


def test_over_the_cap_it_keeps_the_first_exposures_and_the_first_of_every_stream(monkeypatch, hang):
    monkeypatch.setattr(uaftrace, "MAX_STORIES", 5)
    s = run(chaos=HANG_5, duration=8)
    tr = s["uaf_trace"]
    assert tr["exposures"] == hang["uaf_exposures"] and tr["max_stories"] == 5
    full = hang["uaf_trace"]["stories"]
    want = [st for i, st in enumerate(full) if i < 5 or st["first_of_stream"]]
    assert [(st["sid"], st["dma_s"]) for st in tr["stories"]] == [(st["sid"], st["dma_s"]) for st in want]
    assert len(tr["stories"]) == 5 + sum(1 for st in full[5:] if st["first_of_stream"])


def test_a_page_freed_before_the_kept_records_is_told_without_its_unmap(monkeypatch):
    monkeypatch.setattr(uaftrace, "MAX_FREED", 1)
    s = run(chaos=HANG_5, duration=8)
    stories = s["uaf_trace"]["stories"]
    assert stories and s["uaf_trace"]["records_dropped"] > 0
    lost = [st for st in stories if st["unmap"] is None]
    assert lost and all("freed before the latest 1 frees" in st["note"] for st in lost)
    assert all(st["iova"] is None and st["sync_codes"] is None and st["atc"]["hit"] for st in lost)


def test_a_reallocated_page_says_when_and_to_whom():
    s = run(chaos=HANG_5, duration=6, topology={**BASE["topology"], "spare_pages": 0})
    stories = s["uaf_trace"]["stories"]
    assert s["uaf_reallocated"] > 0
    for st in stories:
        if st["page_owner_now"] is not None and st["page_owner_now"] != st["mapping"]:
            assert st["freed_s"] <= st["reallocated_s"] <= st["dma_s"], st
            assert st["reallocated_to"]["mapping"] != st["mapping"]
    assert any(st["reallocated_to"] for st in stories)


def test_lazy_mode_tells_the_flush_that_covered_the_page():
    s = run(policy={"name": "amd-iommu"}, chaos=HANG_5, duration=5)
    assert s["flush"]["mode"] == "lazy" and s["uaf_exposures"] > 0
    st = s["uaf_trace"]["stories"][0]
    assert st["flush"] is not None
    assert st["unmap"]["returned_s"] <= st["flush"]["started_s"] <= st["flush_returned_s"] == st["freed_s"]
    assert st["flush_returned_s"] == st["flush"]["returned_s"]
    assert st["sync_codes"] and st["sync_codes"][-1]["code"] in (0, -5)  # the flush's COMPLETION_WAIT


def test_a_policy_without_per_sync_codes_says_so_and_a_lying_device_kept_its_entry():
    s = run(policy={"name": "fence-on-timeout"}, chaos=[{"at": 1, "fault": "lie", "endpoints": [5], "duration": 3}],
            duration=4)
    st = s["uaf_trace"]["stories"][0]
    assert st["sync_codes"] is None and "no return code per CMD_SYNC" in st["note"]
    assert st["atc"]["invalidation"] == "kept" and st["unmap"]["err"] == 0


# --- the file and the command --------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    sc = tmp / "hang.yaml"
    sc.write_text(yaml.safe_dump({**BASE, "name": "hang", "duration": 5, "chaos": HANG_5}))
    r = runner.invoke(app, ["run", str(sc), "-q", "-o", str(tmp / "out")])
    assert r.exit_code == 0, r.output
    return tmp / "out"


def test_run_writes_the_stories_to_uaf_trace_jsonl_and_keeps_them_out_of_summary_json(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    lines = (run_dir / "uaf-trace.jsonl").read_text().splitlines()
    assert "stories" not in s["uaf_trace"] and s["uaf_trace"]["file"] == "uaf-trace.jsonl"
    assert len(lines) == s["uaf_trace"]["recorded"] == s["uaf_exposures"] > 0
    first = json.loads(lines[0])
    for key in ("sid", "iova", "unmap", "sync_codes", "flush_returned_s", "freed_s", "reallocated_s", "dma_s", "atc"):
        assert key in first, key
    assert set(first["unmap"]) >= {"id", "cpu", "domain", "arrived_s"}


def test_explain_prints_an_ftrace_like_timeline_in_time_order(run_dir):
    r = runner.invoke(app, ["explain", str(run_dir)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("# ats-stress explain: UAF 1 of ")
    events = [ln for ln in lines if not ln.startswith("#")]
    stamps = [float(re.search(r"\] +(\d+\.\d{6}): ", ln).group(1)) for ln in events]
    assert stamps == sorted(stamps) and len(events) >= 6
    text = "\n".join(events)
    assert "fault: stream 5 misbehaves from here" in events[0]
    for what in ("dma_unmap_page: ", "unmap: IOMMU: iova=0x", "cmd_sync: ret=-110 (-ETIMEDOUT) after 1.000000 s",
                 "iotlb_sync: ret=-110 (-ETIMEDOUT) (ignored", "free_page: page=0x", "atc_inv: sid=5 Invalidate Request sent, still unanswered"):
        assert what in text, what
    assert events[-1].rstrip().endswith("<-- UAF") and "ats_translated_write: sid=5 " in events[-1]
    first = json.loads((run_dir / "uaf-trace.jsonl").read_text().splitlines()[0])
    cpu = f"[{first['unmap']['cpu']:03d}]"
    assert all(cpu in ln for ln in events if f"unmap-{first['unmap']['id']} " in ln)  # the unmap's task on its CPU


def test_explain_by_stream_and_by_number_agree_and_bad_picks_are_exit_2(run_dir):
    stories = [json.loads(x) for x in (run_dir / "uaf-trace.jsonl").read_text().splitlines()]
    other = next(st for st in stories if st["sid"] != 5)
    by_sid = runner.invoke(app, ["explain", str(run_dir), "--sid", str(other["sid"])])
    by_n = runner.invoke(app, ["explain", str(run_dir), "--uaf", str(other["n"])])
    assert by_sid.exit_code == 0 and by_sid.output == by_n.output
    assert "no Invalidate Request for it had reached the device" in by_sid.output
    for args, words in ((["--uaf", "0"], "the trace holds stories 1 to"), (["--sid", "999"], "stream 999 has no UAF"),
                        (["--uaf", "1", "--sid", "5"], "give one of them")):
        r = runner.invoke(app, ["explain", str(run_dir), *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output


def test_explain_of_a_run_without_uaf_and_of_no_run(tmp_path):
    sc = tmp_path / "quiet.yaml"
    sc.write_text(yaml.safe_dump({**BASE, "name": "quiet", "duration": 1}))
    assert runner.invoke(app, ["run", str(sc), "-q", "-o", str(tmp_path / "q")]).exit_code == 0
    assert (tmp_path / "q" / "uaf-trace.jsonl").read_text() == ""
    r = runner.invoke(app, ["explain", str(tmp_path / "q")])
    assert r.exit_code == 0 and "no UAF exposure in this run" in r.output
    r = runner.invoke(app, ["explain", str(tmp_path)])
    assert r.exit_code == 2 and "no uaf-trace.jsonl here" in r.output
