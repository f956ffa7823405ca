"""SMMUv3 architectural constants (Arm IHI 0070), named as Linux's arm-smmu-v3.h names them.

Every value here is the spec's encoding; the model only ever refers to these names, so a kernel
engineer can grep for them. Text for error codes lives beside the codes (``CERROR_TEXT``), the way
arm_smmu_cmdq_skip_err() keeps its strings next to its recovery.
"""

from __future__ import annotations

from typing import Final

# --- Command opcodes (SMMU_CMDQ entries, bits [7:0]) -------------------------------------------
CMDQ_OP_CFGI_STE: Final = 0x03
CMDQ_OP_CFGI_ALL: Final = 0x04  # CFGI_STE_RANGE with Range 31
CMDQ_OP_CFGI_CD: Final = 0x05
CMDQ_OP_TLBI_NH_ASID: Final = 0x11
CMDQ_OP_TLBI_NH_VA: Final = 0x12
CMDQ_OP_TLBI_S12_VMALL: Final = 0x28
CMDQ_OP_TLBI_S2_IPA: Final = 0x2A
CMDQ_OP_TLBI_NSNH_ALL: Final = 0x30
CMDQ_OP_ATC_INV: Final = 0x40
CMDQ_OP_PRI_RESP: Final = 0x41
CMDQ_OP_RESUME: Final = 0x44
CMDQ_OP_CMD_SYNC: Final = 0x46

OPCODE_NAMES: Final[dict[int, str]] = {
    CMDQ_OP_CFGI_STE: "CFGI_STE",
    CMDQ_OP_CFGI_ALL: "CFGI_ALL",
    CMDQ_OP_CFGI_CD: "CFGI_CD",
    CMDQ_OP_TLBI_NH_ASID: "TLBI_NH_ASID",
    CMDQ_OP_TLBI_NH_VA: "TLBI_NH_VA",
    CMDQ_OP_TLBI_S12_VMALL: "TLBI_S12_VMALL",
    CMDQ_OP_TLBI_S2_IPA: "TLBI_S2_IPA",
    CMDQ_OP_TLBI_NSNH_ALL: "TLBI_NSNH_ALL",
    CMDQ_OP_ATC_INV: "ATC_INV",
    CMDQ_OP_PRI_RESP: "PRI_RESP",
    CMDQ_OP_RESUME: "RESUME",
    CMDQ_OP_CMD_SYNC: "CMD_SYNC",
}

#: arm-smmu-v3 submits at most this many commands per cmdq batch (CMDQ_BATCH_ENTRIES).
CMDQ_BATCH_ENTRIES: Final = 64

# --- Command queue sizes (hardware.cmdq_entries: null takes the driver's own) -------------------------
#: SMMU_IDR1.CMDQS of an implementation: 19 (2^19 entries, the architectural maximum) in QEMU's
#: SMMUv3 (hw/arm/smmuv3-internal.h, SMMU_CMDQS).
SMMU_IDR1_CMDQS_QEMU: Final = 19
#: Linux caps the CMDQ at CMDQ_MAX_SZ_SHIFT = Q_MAX_SZ_SHIFT - CMDQ_ENT_SZ_SHIFT (16-byte entries),
#: Q_MAX_SZ_SHIFT = PAGE_SHIFT + CONFIG_CMA_ALIGNMENT = 12 + 8 on arm64 (arm-smmu-v3.h): 2^16.
CMDQ_MAX_SZ_SHIFT: Final = 12 + 8 - 4
#: What arm-smmu-v3 ends up with: min(IDR1.CMDQS, CMDQ_MAX_SZ_SHIFT) in arm_smmu_device_hw_probe().
ARM_SMMU_CMDQ_ENTRIES: Final = 1 << min(SMMU_IDR1_CMDQS_QEMU, CMDQ_MAX_SZ_SHIFT)
#: Linux refuses a CMDQ of CMDQ_BATCH_ENTRIES (64) entries or fewer ("command queue size <= %d entries
#: not supported"): the smallest it runs with is 128.
ARM_SMMU_CMDQ_MIN_ENTRIES: Final = 128
#: AMD: CMD_BUFFER_SIZE 8192 bytes of 16-byte commands (amd_iommu_types.h).
AMD_CMD_BUFFER_ENTRIES: Final = 8192 // 16
#: __iommu_queue_command_sync() writes a command only while more than 0x20 bytes (two commands)
#: stay free after it ("left <= 0x20": wait).
AMD_CMD_BUFFER_SPARE: Final = 0x20 // 16
#: VT-d: QI_LENGTH descriptors in the invalidation queue; qi_submit_sync() waits while fewer than
#: count + 2 are free (its descriptors, the wait descriptor and one kept empty).
QI_LENGTH: Final = 256

#: ATC_INV Size field value meaning "invalidate everything" (ATC_INV_SIZE_ALL in Linux).
ATC_INV_SIZE_ALL: Final = 52

# CMD_SYNC completion signal (CMDQ_SYNC_0_CS).
CMDQ_SYNC_0_CS_NONE: Final = 0
CMDQ_SYNC_0_CS_IRQ: Final = 1
CMDQ_SYNC_0_CS_SEV: Final = 2

# --- Command-queue errors: SMMU_CMDQ_CONS.ERR, raised through GERROR.CMDQ_ERR -------------------
CMDQ_ERR_CERROR_NONE_IDX: Final = 0
CMDQ_ERR_CERROR_ILL_IDX: Final = 1
CMDQ_ERR_CERROR_ABT_IDX: Final = 2
CMDQ_ERR_CERROR_ATC_INV_IDX: Final = 3  # CERROR_ATC_INV_SYNC

CERROR_TEXT: Final[dict[int, str]] = {
    CMDQ_ERR_CERROR_NONE_IDX: "No error",
    CMDQ_ERR_CERROR_ILL_IDX: "Illegal command",
    CMDQ_ERR_CERROR_ABT_IDX: "Abort on command fetch",
    CMDQ_ERR_CERROR_ATC_INV_IDX: "ATC invalidate timeout",
}

# --- Stream table entry fields ------------------------------------------------------------------
STRTAB_STE_0_CFG_ABORT: Final = 0
STRTAB_STE_0_CFG_BYPASS: Final = 4
STRTAB_STE_0_CFG_S1_TRANS: Final = 5
STRTAB_STE_0_CFG_S2_TRANS: Final = 6

STE_CFG_NAMES: Final[dict[int, str]] = {
    STRTAB_STE_0_CFG_ABORT: "abort",
    STRTAB_STE_0_CFG_BYPASS: "bypass",
    STRTAB_STE_0_CFG_S1_TRANS: "s1-translate",
    STRTAB_STE_0_CFG_S2_TRANS: "s2-translate",
}

STRTAB_STE_1_EATS_ABT: Final = 0b00  # ATS off: TReq -> F_BAD_ATS_TREQ, translated -> F_TRANSL_FORBIDDEN
STRTAB_STE_1_EATS_TRANS: Final = 0b01  # full ATS
STRTAB_STE_1_EATS_S1CHK: Final = 0b10  # split-stage ATS

# --- Event queue record types (EVT_ID_*) ---------------------------------------------------------
EVT_ID_BAD_STE: Final = 0x04  # C_BAD_STE
EVT_ID_BAD_ATS_TREQ: Final = 0x05  # F_BAD_ATS_TREQ
EVT_ID_TRANSL_FORBIDDEN: Final = 0x07  # F_TRANSL_FORBIDDEN
EVT_ID_TRANSLATION_FAULT: Final = 0x10  # F_TRANSLATION
EVT_ID_PERMISSION_FAULT: Final = 0x13  # F_PERMISSION

#: AMD IOMMU event log: EVENT_TYPE_IOTLB_INV_TO, 0x7 in amd_iommu_types.h: the hardware's IOTLB
#: invalidation timeout (CTRL_INV_TO) naming the DeviceID. The model keeps one event-id space for
#: every IOMMU, and 0x07 there is SMMUv3's F_TRANSL_FORBIDDEN, so the AMD code is offset by 0x100.
EVT_ID_AMD_IOTLB_INV_TO: Final = 0x100 | 0x7

EVT_NAMES: Final[dict[int, str]] = {
    EVT_ID_BAD_STE: "C_BAD_STE",
    EVT_ID_BAD_ATS_TREQ: "F_BAD_ATS_TREQ",
    EVT_ID_TRANSL_FORBIDDEN: "F_TRANSL_FORBIDDEN",
    EVT_ID_TRANSLATION_FAULT: "F_TRANSLATION",
    EVT_ID_PERMISSION_FAULT: "F_PERMISSION",
    EVT_ID_AMD_IOTLB_INV_TO: "IOTLB_INV_TIMEOUT",
}

#: SMMU_IDR0.ATS
IDR0_ATS: Final = 1 << 10

# --- PCIe ATS ------------------------------------------------------------------------------------
#: ITags are 5 bits: 0..31.
ATS_MAX_ITAGS: Final = 32
#: 4 KiB translation granule: ATC_INV addresses are in these pages.
PAGE_SHIFT: Final = 12

# --- Linux error numbers as the unmap path sees them ---------------------------------------------
EIO: Final = 5
ENODEV: Final = 19
ETIMEDOUT: Final = 110
