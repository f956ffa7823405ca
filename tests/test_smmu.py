"""SMMUv3 command-queue and stream-table semantics, driven directly with a recorder as ports."""

import pytest

from ats_stress.device_actors.pcie import MSG_INV_REQ, MSG_TRANS_CPL
from ats_stress.iommu_actor.commands import CommandError, atc_inv_span, build_cmd, cmd_atc_inv, cmd_cfgi_ste, cmd_sync, cmd_tlbi_nh_va
from ats_stress.iommu_actor.smmu import Smmu
from ats_stress.iommu_actor.spec import (
    ATC_INV_SIZE_ALL,
    CMDQ_ERR_CERROR_ATC_INV_IDX,
    EVT_ID_BAD_ATS_TREQ,
    EVT_ID_TRANSL_FORBIDDEN,
    EVT_ID_TRANSLATION_FAULT,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_1_EATS_ABT,
    STRTAB_STE_1_EATS_TRANS,
)

from helpers import Recorder


def make(queues=1, depth=32, timeout=60.0, sids=(1, 2, 3)):
    rec = Recorder()
    pt = {0: [(100 + i, 1000 + i) for i in range(8)]}
    smmu = Smmu(rec, command_queues=queues, invalidate_queue_depth=depth, atc_inv_completion_timeout=timeout,
                page_tables=pt)
    for sid in sids:
        smmu.add_stream(sid, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS, 0)
    return smmu, rec, pt


def itag_of(rec, sid):
    return [m[2] for m in rec.sent if m[0] == MSG_INV_REQ and m[1] == sid][-1]


def test_build_cmd_rejects_unknown_opcode():
    with pytest.raises(CommandError, match="0x99"):
        build_cmd(0x99)


def test_atc_inv_rejects_unaligned_span_and_size_above_all():
    with pytest.raises(CommandError):
        cmd_atc_inv(1, addr=3, size=1)
    with pytest.raises(CommandError):
        cmd_atc_inv(1, addr=0, size=ATC_INV_SIZE_ALL + 1)


def test_atc_inv_span_is_naturally_aligned_power_of_two():
    assert atc_inv_span(8, 1) == (8, 0)
    assert atc_inv_span(8, 8) == (8, 3)
    assert atc_inv_span(7, 2) == (0, 4)  # pages 7 and 8 straddle an 8-page boundary
    assert atc_inv_span(0, 1 << 60)[1] == ATC_INV_SIZE_ALL


def test_cmd_sync_waits_for_every_earlier_atc_inv():
    smmu, rec, _ = make()
    smmu.submit(0, [cmd_atc_inv(1, 0, 0), cmd_atc_inv(2, 0, 0), cmd_sync(7)], now=0.0)
    assert [m[1] for m in rec.sent] == [1, 2]  # both Invalidate Requests go out at once
    assert rec.syncs == []
    smmu.inv_completion(1, itag_of(rec, 1), now=1e-6)
    assert rec.syncs == []
    smmu.inv_completion(2, itag_of(rec, 2), now=2e-6)
    assert rec.syncs == [(0, 7)]


def test_commands_behind_a_pending_cmd_sync_wait():
    smmu, rec, _ = make()
    smmu.submit(0, [cmd_atc_inv(1, 0, 0), cmd_sync(1)], now=0.0)
    smmu.submit(0, [cmd_atc_inv(2, 0, 0), cmd_sync(2)], now=0.0)
    assert [m[1] for m in rec.sent] == [1]  # CONS does not pass the first CMD_SYNC
    assert smmu.queues[0].depth == 3
    smmu.inv_completion(1, itag_of(rec, 1), now=1.0)
    assert [m[1] for m in rec.sent] == [1, 2]
    assert rec.syncs == [(0, 1)]


def test_one_unanswered_atc_inv_wedges_the_whole_queue():
    smmu, rec, _ = make()
    smmu.submit(0, [cmd_atc_inv(1, 0, 0), cmd_sync(1)], now=0.0)
    for i in range(10):
        smmu.submit(0, [cmd_tlbi_nh_va(0, i), cmd_sync(10 + i)], now=0.1)
    assert rec.syncs == []
    assert smmu.queues[0].depth == 21  # the ATC_INV was consumed; its CMD_SYNC and all 20 behind it wait


def test_hw_timeout_raises_cerror_atc_inv_sync_at_the_cmd_sync_without_naming_the_device():
    smmu, rec, _ = make(timeout=60.0)
    smmu.submit(0, [cmd_atc_inv(1, 0, 0), cmd_atc_inv(2, 0, 0), cmd_sync(5)], now=0.0)
    smmu.inv_completion(2, itag_of(rec, 2), now=0.001)
    assert rec.timers == [(60.0, 0)]
    smmu.on_hw_timeout(0, now=60.0)
    assert len(rec.errors) == 1
    queue, cerror, token, _ = rec.errors[0]
    assert (queue, cerror, token) == (0, CMDQ_ERR_CERROR_ATC_INV_IDX, 5)
    assert smmu.queues[0].cmds[0].token == 5  # CONS still points at the CMD_SYNC
    assert rec.syncs == []
    smmu.submit(0, [cmd_tlbi_nh_va(0, 0), cmd_sync(6)], now=61.0)
    assert rec.syncs == []  # halted until software acknowledges
    smmu.ack_cmdq_error(0, now=62.0)
    assert rec.syncs == [(0, 5), (0, 6)]  # the CMD_SYNC re-ran, then the rest
    assert smmu.hw_atc_timeouts == 1


def test_late_completion_after_hw_timeout_is_counted_stale():
    smmu, rec, _ = make(timeout=1.0)
    smmu.submit(0, [cmd_atc_inv(1, 0, 0), cmd_sync(1)], now=0.0)
    tag = itag_of(rec, 1)
    smmu.on_hw_timeout(0, now=1.0)
    smmu.ack_cmdq_error(0, now=1.0)
    smmu.inv_completion(1, tag, now=2.0)
    assert smmu.stale_completions == 1


def test_invalidate_queue_depth_back_pressures_cons():
    smmu, rec, _ = make(depth=2)
    smmu.submit(0, [cmd_atc_inv(1, i, 0) for i in range(3)] + [cmd_sync(1)], now=0.0)
    assert len(rec.sent) == 2  # the third ATC_INV waits for a free ITag
    assert sorted(m[2] for m in rec.sent) == [0, 1]
    smmu.inv_completion(1, rec.sent[0][2], now=1.0)
    assert len(rec.sent) == 3 and rec.sent[2][2] == rec.sent[0][2]  # the ITag is reused once free


def test_several_queues_are_independent():
    smmu, rec, _ = make(queues=2)
    smmu.submit(0, [cmd_atc_inv(1, 0, 0), cmd_sync(1)], now=0.0)
    smmu.submit(1, [cmd_tlbi_nh_va(0, 0), cmd_sync(2)], now=0.0)
    assert rec.syncs == [(1, 2)]  # queue 1 retires while queue 0 is wedged


def test_ste_change_takes_effect_only_at_cfgi_ste():
    smmu, rec, _ = make()
    smmu.write_ste(1, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT)
    smmu.translated_request(1, 0, 100, 1000)
    assert len(rec.accesses) == 1  # still the cached STE
    smmu.submit(0, [cmd_cfgi_ste(1), cmd_sync(1)], now=0.0)
    assert rec.ste == [(1, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT)]
    smmu.translated_request(1, 0, 100, 1000)
    assert len(rec.accesses) == 1 and len(rec.blocked_list) == 1
    assert rec.events == []  # STE.Config abort records no event


def test_eats_off_records_f_transl_forbidden_and_f_bad_ats_treq():
    smmu, rec, _ = make()
    smmu.write_ste(1, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_ABT)
    smmu.submit(0, [cmd_cfgi_ste(1), cmd_sync(1)], now=0.0)
    smmu.translated_request(1, 0, 100, 1000)
    smmu.translation_request(1, 0)
    assert [e[0] for e in rec.events] == [EVT_ID_TRANSL_FORBIDDEN, EVT_ID_BAD_ATS_TREQ]
    assert rec.sent[-1] == (MSG_TRANS_CPL, 1, 0, -1, 0)


def test_translation_request_walks_the_page_table():
    smmu, rec, pt = make()
    smmu.translation_request(1, 3)
    assert rec.sent[-1] == (MSG_TRANS_CPL, 1, 3, 103, 1003)
    pt[0][3] = None
    smmu.translation_request(1, 3)
    assert rec.sent[-1] == (MSG_TRANS_CPL, 1, 3, -1, 0)
    assert rec.events[-1][0] == EVT_ID_TRANSLATION_FAULT


def test_scrub_rewrites_queued_atc_inv_only_while_halted_and_only_in_the_named_batches():
    smmu, rec, _ = make(timeout=1.0)
    smmu.submit(0, [cmd_atc_inv(1, 0, 0), cmd_sync(1)], now=0.0)
    smmu.submit(0, [cmd_atc_inv(1, 1, 0), cmd_atc_inv(2, 1, 0), cmd_sync(2)], now=0.0)
    smmu.submit(0, [cmd_atc_inv(1, 2, 0), cmd_sync(3)], now=0.0)
    with pytest.raises(ValueError, match="not halted"):
        smmu.scrub_atc_inv(0, {2: frozenset({1})})
    smmu.on_hw_timeout(0, now=1.0)
    assert rec.errors and rec.errors[0][2] == 1
    assert smmu.scrub_atc_inv(0, {2: frozenset({1})}) == 1
    smmu.ack_cmdq_error(0, now=1.0)
    sent_after = [(m[1], m[3]) for m in rec.sent[1:]]
    assert sent_after == [(2, 1)]  # batch 2 lost its ATC_INV for stream 1; batch 3 still waits behind it
    smmu.inv_completion(2, itag_of(rec, 2), now=1.1)
    assert [m[1] for m in rec.sent[1:]] == [2, 1]  # batch 3 kept its own
    assert rec.syncs == [(0, 1), (0, 2)]
