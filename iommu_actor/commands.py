"""Command-queue entries and the one builder that makes them (arm_smmu_cmdq_build_cmd()).

A command is a small slotted object rather than a 16-byte encoding: the model needs the fields,
not the bits. ``build_cmd`` is a single switch on the opcode, like the kernel's, and it rejects any
opcode the model does not implement instead of letting the queue meet an illegal command.
"""

from __future__ import annotations

from functools import lru_cache

from .spec import (
    ATC_INV_SIZE_ALL,
    CMDQ_OP_ATC_INV,
    CMDQ_OP_CFGI_ALL,
    CMDQ_OP_CFGI_STE,
    CMDQ_OP_CMD_SYNC,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_OP_TLBI_NSNH_ALL,
    CMDQ_OP_TLBI_S12_VMALL,
    CMDQ_SYNC_0_CS_IRQ,
    OPCODE_NAMES,
)


class CommandError(ValueError):
    """A command that the builder refuses: software asked for something the SMMU cannot encode."""


class Cmd:
    """One command-queue entry.

    ``addr`` is a 4 KiB page number and ``size`` a log2 page count (ATC_INV's Size field;
    ``ATC_INV_SIZE_ALL`` means everything). ``token`` is the driver's own handle for a CMD_SYNC:
    the CMD_SYNC's queue index in Linux, which the driver polls on and CMDQ_CONS points at.
    """

    __slots__ = ("op", "sid", "ssid", "ssv", "addr", "size", "asid", "token", "cs")

    def __init__(self, op: int, sid: int = 0, ssid: int = 0, ssv: bool = False, addr: int = 0,
                 size: int = 0, asid: int = 0, token: int = -1, cs: int = CMDQ_SYNC_0_CS_IRQ):
        self.op = op
        self.sid = sid
        self.ssid = ssid
        self.ssv = ssv
        self.addr = addr
        self.size = size
        self.asid = asid
        self.token = token
        self.cs = cs

    def __repr__(self) -> str:
        name = OPCODE_NAMES.get(self.op, hex(self.op))
        if self.op == CMDQ_OP_ATC_INV:
            return f"CMD_ATC_INV(sid={self.sid}, addr={self.addr:#x}, size={self.size})"
        if self.op == CMDQ_OP_CMD_SYNC:
            return f"CMD_SYNC(token={self.token})"
        if self.op == CMDQ_OP_CFGI_STE:
            return f"CMD_CFGI_STE(sid={self.sid})"
        return f"CMD_{name}(asid={self.asid}, addr={self.addr:#x})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cmd):
            return NotImplemented
        return self._fields() == other._fields()

    def _fields(self) -> tuple:
        return (self.op, self.sid, self.ssid, self.ssv, self.addr, self.size, self.asid, self.token, self.cs)

    __hash__ = None  # type: ignore[assignment]


def build_cmd(op: int, **fields: int) -> Cmd:
    """Build one command, checking the fields its opcode carries (arm_smmu_cmdq_build_cmd())."""
    if op == CMDQ_OP_ATC_INV:
        size = fields.get("size", 0)
        if not 0 <= size <= ATC_INV_SIZE_ALL:
            raise CommandError(f"ATC_INV size {size} outside 0..{ATC_INV_SIZE_ALL}")
        addr = fields.get("addr", 0)
        if size != ATC_INV_SIZE_ALL and addr & ((1 << size) - 1):
            raise CommandError(f"ATC_INV span at page {addr:#x} is not aligned to 2^{size} pages")
        return Cmd(op, sid=fields["sid"], ssid=fields.get("ssid", 0), ssv=bool(fields.get("ssv", 0)),
                   addr=addr, size=size)
    if op == CMDQ_OP_CMD_SYNC:
        return Cmd(op, token=fields["token"], cs=fields.get("cs", CMDQ_SYNC_0_CS_IRQ))
    if op == CMDQ_OP_CFGI_STE:
        return Cmd(op, sid=fields["sid"])
    if op in (CMDQ_OP_TLBI_NH_VA, CMDQ_OP_TLBI_NH_ASID):
        return Cmd(op, asid=fields.get("asid", 0), addr=fields.get("addr", 0))
    if op in (CMDQ_OP_TLBI_S12_VMALL, CMDQ_OP_TLBI_NSNH_ALL, CMDQ_OP_CFGI_ALL):
        return Cmd(op, asid=fields.get("asid", 0))
    raise CommandError(f"opcode {op:#04x} ({OPCODE_NAMES.get(op, 'unknown')}) is not implemented by the model")


# The two commands of every flush are built with positional arguments and the same checks as
# build_cmd's: the hot path of a run (tens of thousands of each per scenario second).

def cmd_atc_inv(sid: int, addr: int, size: int, ssid: int = 0, ssv: bool = False) -> Cmd:
    """CMD_ATC_INV for one stream (arm_smmu_atc_inv_to_cmd()). Linux never sets Global."""
    if not 0 <= size <= ATC_INV_SIZE_ALL:
        raise CommandError(f"ATC_INV size {size} outside 0..{ATC_INV_SIZE_ALL}")
    if size != ATC_INV_SIZE_ALL and addr & ((1 << size) - 1):
        raise CommandError(f"ATC_INV span at page {addr:#x} is not aligned to 2^{size} pages")
    return Cmd(CMDQ_OP_ATC_INV, sid, ssid, bool(ssv), addr, size)


def cmd_sync(token: int) -> Cmd:
    return Cmd(CMDQ_OP_CMD_SYNC, 0, 0, False, 0, 0, 0, token, CMDQ_SYNC_0_CS_IRQ)


def cmd_cfgi_ste(sid: int) -> Cmd:
    return build_cmd(CMDQ_OP_CFGI_STE, sid=sid)


def cmd_tlbi_nh_va(asid: int, addr: int) -> Cmd:
    return build_cmd(CMDQ_OP_TLBI_NH_VA, asid=asid, addr=addr)


def cmd_tlbi_nh_asid(asid: int) -> Cmd:
    """The whole ASID (arm_smmu_tlb_inv_context: a size the range path deems too big)."""
    return build_cmd(CMDQ_OP_TLBI_NH_ASID, asid=asid)


@lru_cache(maxsize=8)  # every probe of one unmap asks for the same span (small: a trace replay asks many)
def atc_inv_span(addr: int, npages: int) -> tuple[int, int]:
    """The naturally aligned power-of-two span covering [addr, addr+npages): (base, log2 size).

    Same arithmetic as arm_smmu_atc_inv_to_cmd(): grow the span until both ends fit.
    """
    if npages <= 0:
        raise CommandError("an ATC invalidation must cover at least one page")
    end = addr + npages - 1
    log2 = max(0, (npages - 1).bit_length())
    while (addr >> log2) != (end >> log2):
        log2 += 1
    if log2 >= ATC_INV_SIZE_ALL:
        return 0, ATC_INV_SIZE_ALL
    return (addr >> log2) << log2, log2
