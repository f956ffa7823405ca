"""ATS endpoint behaviours, driven directly."""

from ats_stress.device_actors.endpoint import DEAD, HEALTHY, EndpointGroup
from ats_stress.device_actors.pcie import (
    MSG_FLR, MSG_FLR_DONE, MSG_INV_CPL, MSG_INV_REQ, MSG_PRESENCE, MSG_PRESENCE_QUERY, MSG_TRANS_CPL,
    MSG_TRANS_REQ, MSG_TRANSLATED,
)


def group(dma=0.0, median=1e-5, p99=1e-5, atc=4):
    return EndpointGroup(0, [(1, 0), (2, 0)], atc_entries=atc, pages_per_domain=8, dma_per_endpoint_per_s=dma,
                         inv_latency_median=median, inv_latency_p99=p99, flr_time=0.1, seed="t")


def run_timers(g, until):
    """Fire the group's own timers in time order until ``until``; return everything it sent.
    Timers not yet due stay pending for the next call."""
    sent = []
    if not hasattr(g, "test_pending"):
        g.test_pending = []
    pending = g.test_pending
    out, timers = g.drain()
    sent += out
    pending += timers
    while pending:
        pending.sort(key=lambda x: x[0])
        t, tag = pending[0]
        if t > until:
            break
        pending.pop(0)
        g.on_timer(t, tag)
        out, timers = g.drain()
        sent += out
        pending += timers
    return sent


def fill(g, sid, addr, pa=100, tag=7):
    g.on_messages(0.0, [(MSG_TRANS_CPL, sid, addr, pa, tag)])
    g.drain()


def test_healthy_endpoint_drops_the_entry_then_answers():
    g = group()
    fill(g, 1, 3)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0)])
    sent = run_timers(g, 2.0)
    assert sent == [(MSG_INV_CPL, 1, 5, 1, 0)]
    assert 3 not in g.by_sid[1].atc


def test_hung_endpoint_holds_invalidations_and_keeps_using_stale_entries():
    g = group()
    fill(g, 1, 3)
    g.apply_fault(1.0, 1, "hang", {}, step=0)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0)])
    assert run_timers(g, 5.0) == []
    assert g.by_sid[1].atc[3] == (100, 7)  # received but not processed: still usable for DMA
    g.end_fault(6.0, 1, step=0)
    sent = run_timers(g, 7.0)
    assert sent == [(MSG_INV_CPL, 1, 5, 1, 0)]  # the timed hang ends: what it held is answered
    assert 3 not in g.by_sid[1].atc


def test_lying_endpoint_answers_without_dropping_entries():
    g = group()
    fill(g, 1, 3)
    g.apply_fault(0.5, 1, "lie", {}, step=0)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0)])
    assert run_timers(g, 2.0) == [(MSG_INV_CPL, 1, 5, 1, 0)]
    assert 3 in g.by_sid[1].atc


def test_dropping_endpoint_invalidates_but_loses_completions():
    g = group()
    g.apply_fault(0.0, 1, "drop", {"fraction": 1.0}, step=0)
    fill(g, 1, 3)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0)])
    assert run_timers(g, 2.0) == []
    assert 3 not in g.by_sid[1].atc
    assert g.inv_lost == 1


def test_itag_leak_never_completes_the_leaked_tags():
    g = group()
    g.apply_fault(0.0, 1, "itag_leak", {"tags": 2}, step=0)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 0, 0, 0), (MSG_INV_REQ, 1, 3, 1, 0)])
    assert run_timers(g, 2.0) == [(MSG_INV_CPL, 1, 3, 1, 0)]  # ITag 0 leaks, ITag 3 does not


def test_removed_endpoint_answers_nothing_and_is_not_present():
    g = group()
    g.apply_fault(0.0, 1, "removed", {}, step=0)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0), (MSG_PRESENCE_QUERY, 1, 0, 0, 0)])
    sent = run_timers(g, 2.0)
    assert sent == [(MSG_PRESENCE, 1, 0, 0, 0)]


def test_flr_empties_the_atc_drops_held_requests_and_heals():
    g = group()
    fill(g, 1, 3)
    g.apply_fault(0.5, 1, "hang", {}, step=0)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0), (MSG_FLR, 1, 0, 0, 0)])
    sent = run_timers(g, 2.0)
    assert sent == [(MSG_FLR_DONE, 1, 1, 1.0, 0)]
    ep = g.by_sid[1]
    assert ep.mode == HEALTHY and not ep.atc and not ep.pending


def test_failed_reset_leaves_the_device_dead():
    g = group()
    g.apply_fault(0.0, 1, "hang", {"recover_on_reset": False}, step=0)
    g.on_messages(1.0, [(MSG_FLR, 1, 0, 0, 0)])
    assert run_timers(g, 2.0) == [(MSG_FLR_DONE, 1, 0, 1.0, 0)]
    assert g.by_sid[1].mode == DEAD


def test_flapping_endpoint_alternates_hang_and_service():
    g = group()
    g.apply_fault(0.0, 1, "flap", {"period": 2.0, "hang_for": 1.0}, step=0)
    g.on_messages(0.5, [(MSG_INV_REQ, 1, 5, 3, 0)])
    assert run_timers(g, 0.9) == []
    assert run_timers(g, 1.5) == [(MSG_INV_CPL, 1, 5, 1, 0)]  # released when the hang phase ends


def test_dma_uses_atc_hits_and_asks_for_translations_on_misses():
    g = group(dma=1000.0, atc=64)
    g.start(0.0)
    sent = run_timers(g, 0.05)
    kinds = {m[0] for m in sent}
    assert kinds == {MSG_TRANS_REQ}  # empty ATCs: every DMA starts with a Translation Request
    req = sent[0]
    g.on_messages(0.06, [(MSG_TRANS_CPL, req[1], req[2], 42, 9)])
    out, _ = g.drain()
    assert out == [(MSG_TRANSLATED, req[1], req[2], 42, 9)]


def test_atc_is_lru_bounded():
    g = group(atc=2)
    for addr in range(3):
        fill(g, 1, addr)
    assert list(g.by_sid[1].atc) == [1, 2]
