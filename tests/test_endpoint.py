"""ATS endpoint behaviours, driven directly."""

import random

from ats_stress.device_actors.endpoint import DEAD, E_DMA, HEALTHY, EndpointGroup
from ats_stress.device_actors.pcie import (
    MSG_FLR, MSG_FLR_DONE, MSG_INV_CPL, MSG_INV_REQ, MSG_PRESENCE, MSG_PRESENCE_QUERY, MSG_TRANS_CPL,
    MSG_TRANS_REQ, MSG_TRANSLATED, MSG_TRANSLATED_KEPT, MSG_TRANSLATED_PENDING,
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
    # received but not processed: still usable for DMA, which says so (for the UAF's story)
    assert g.by_sid[1].atc[3] == (100, 7, MSG_TRANSLATED_PENDING)
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


def test_dma_draws_are_randrange_and_expovariate_drawn_the_same_way():
    """The group draws its DMA with getrandbits as random.Random's randrange and expovariate do:
    the same stream, so every scenario's run stays what it was (a new Python drawing otherwise
    fails here, not in a figure)."""
    eps = [(s, 0) for s in range(1, 6)]  # 5 endpoints, 10 pages: neither a power of two
    g = EndpointGroup(0, eps, atc_entries=64, pages_per_domain=10, dma_per_endpoint_per_s=200.0,
                      inv_latency_median=1e-5, inv_latency_p99=1e-4, flr_time=0.1, seed="d")
    ref = random.Random("d:group:0")
    g.start(0.0)
    _, timers = g.drain()
    t = ref.expovariate(1000.0)
    assert timers == [(t, (E_DMA,))]
    for _ in range(300):
        g.on_timer(t, (E_DMA,))
        out, timers = g.drain()
        sid = eps[ref.randrange(5)][0]
        assert out == [(MSG_TRANS_REQ, sid, ref.randrange(10), 0, 0)]
        t = t + ref.expovariate(1000.0)
        assert timers == [(t, (E_DMA,))]


def test_atc_is_lru_bounded():
    g = group(atc=2)
    for addr in range(3):
        fill(g, 1, addr)
    assert list(g.by_sid[1].atc) == [1, 2]


def test_atc_refill_makes_the_entry_the_newest():
    """A second Translation Completion for a cached page replaces its entry and makes it the most
    recently used: the eviction that follows takes the other page."""
    g = group(atc=2)
    fill(g, 1, 1)
    fill(g, 1, 2)
    fill(g, 1, 1, pa=101, tag=8)
    fill(g, 1, 3)
    assert g.by_sid[1].atc == {1: (101, 8, MSG_TRANSLATED), 3: (100, 7, MSG_TRANSLATED)}
    assert list(g.by_sid[1].atc) == [1, 3]


def one_page_group(dma=1000.0, median=1e-5, p99=1e-5):
    """One endpoint, one page: every DMA goes to address 0."""
    return EndpointGroup(0, [(1, 0)], atc_entries=4, pages_per_domain=1, dma_per_endpoint_per_s=dma,
                         inv_latency_median=median, inv_latency_p99=p99, flr_time=0.1, seed="t")


def dma_kinds(g, start, until):
    g.start(start)
    return {m[0] for m in run_timers(g, until) if m[0] in (MSG_TRANSLATED, MSG_TRANSLATED_PENDING,
                                                           MSG_TRANSLATED_KEPT)}


def test_dma_through_an_entry_whose_invalidation_a_hung_device_holds_says_so():
    g = one_page_group()
    fill(g, 1, 0)
    assert dma_kinds(g, 0.0, 0.01) == {MSG_TRANSLATED}  # nothing received yet: a plain translated request
    g.apply_fault(0.02, 1, "hang", {}, step=0)
    g.on_messages(0.02, [(MSG_INV_REQ, 1, 5, 0, 0)])
    assert {m[0] for m in run_timers(g, 0.05) if m[0] != MSG_INV_CPL} == {MSG_TRANSLATED_PENDING}


def test_an_entry_filled_after_the_held_invalidation_is_not_marked():
    g = group()
    g.apply_fault(0.0, 1, "hang", {}, step=0)
    fill(g, 1, 3)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0)])  # held: covers the entry filled before it
    assert g.by_sid[1].atc[3][2] == MSG_TRANSLATED_PENDING
    fill(g, 1, 3, pa=101, tag=8)  # a newer translation for the same page: its invalidation is yet to come
    assert g.by_sid[1].atc[3] == (101, 8, MSG_TRANSLATED)


def test_a_held_invalidation_marks_only_the_pages_it_covers():
    g = group(atc=8)
    g.apply_fault(0.0, 1, "hang", {}, step=0)
    for addr in range(6):
        fill(g, 1, addr)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 2, 1)])  # pages 2 and 3
    assert [a for a, e in g.by_sid[1].atc.items() if e[2] == MSG_TRANSLATED_PENDING] == [2, 3]
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 6, 0, 52)])  # ATC_INV_SIZE_ALL
    assert all(e[2] == MSG_TRANSLATED_PENDING for e in g.by_sid[1].atc.values())
    assert list(g.by_sid[1].atc) == [0, 1, 2, 3, 4, 5]  # marking keeps the LRU order


def test_a_lying_device_keeps_the_entry_and_its_dma_says_so():
    g = group()
    fill(g, 1, 3)
    g.apply_fault(0.5, 1, "lie", {}, step=0)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0)])
    run_timers(g, 2.0)
    assert g.by_sid[1].atc[3] == (100, 7, MSG_TRANSLATED_KEPT)


def test_a_slowed_device_marks_what_it_received_and_a_healthy_one_does_not():
    g = group()
    fill(g, 1, 3)
    fill(g, 2, 3)
    g.apply_fault(0.5, 1, "slow", {"latency": {"median": 0.5, "p99": 0.5}}, step=0)
    g.on_messages(1.0, [(MSG_INV_REQ, 1, 5, 3, 0), (MSG_INV_REQ, 2, 5, 3, 0)])
    assert g.by_sid[1].atc[3][2] == MSG_TRANSLATED_PENDING  # in progress for half a second
    assert g.by_sid[2].atc[3][2] == MSG_TRANSLATED  # the group's 10 us: not marked
    run_timers(g, 2.0)
    assert 3 not in g.by_sid[1].atc and 3 not in g.by_sid[2].atc
