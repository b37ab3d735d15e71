"""Hardware limits a design must fit, per NPU profile, each beside its source.

Sources: AMD AM020 (AIE-ML architecture manual: the AIE2 tile of npu1), AM027 (AIE-MLv2: the AIE2P
tile of npu2), mlir-aie's target model ``lib/Dialect/AIE/IR/AIETargetModel.cpp`` / ``.h``
(``AIE2TargetModel``, inherited by the npu2 model) and mlir-aie's verifiers
(``lib/Dialect/AIEX/IR/AIEXDialect.cpp``: ``NpuDmaMemcpyNdOp::verify``; the object-FIFO allocator's
"number of input/output DMA channel exceeded!"), whose diagnostics the
transcribed test cases in ``tests/kernels/test_mlir_aie_cases.py`` reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TileLimits:
    """What one tile of a kind offers."""

    dma_in: int  # S2MM channels
    dma_out: int  # MM2S channels
    buffer_descriptors: int  # BDs of the tile's DMA
    locks: int
    data_bytes: int  # memory for FIFO buffers, local buffers (and the stack, on a core)
    bd_dims: int  # dimensions a BD of this tile can address
    bd_wrap: int  # max size of one BD dimension (DMABDOp::verify: "Size may not exceed 1023.")
    bd_step: int  # max stride of one BD dimension, 32-bit words (DMABDOp::verify: "Stride may not exceed N.")


@dataclass(frozen=True)
class Limits:
    """The limits of one profile."""

    profile: str
    compute: TileLimits
    memtile: TileLimits
    shim: TileLimits
    program_bytes: int  # core program memory
    bd_inner_words: int  # max size of d0 and d1 (32-bit words) when the next-outer dimension strides
    bd_repeat: int  # max size of the repeat dimension d3
    bd_stride_words: int  # max stride of d1..d3 (32-bit words)
    address_bytes: int  # granularity of offsets, strides and innermost sizes
    element_bits: int  # widest element a shim transfer may move
    mmul_bf16: tuple[int, int, int]  # the bf16 aie::mmul block r x s x t the core's kernel must use

    def tile(self, kind: str) -> TileLimits:
        return {"compute": self.compute, "memtile": self.memtile, "shim": self.shim}[kind]


NPU1 = Limits(
    profile="npu1",
    compute=TileLimits(
        dma_in=2,  # AM020 ch. 2 (AIE-ML tile DMA: 2 S2MM + 2 MM2S); AIE2TargetModel::getNumDestSwitchboxConnections(DMA) = 2
        dma_out=2,
        buffer_descriptors=16,  # AIE2TargetModel::getNumBDs: 16 outside the memtile (badmem_toomanybds.mlir)
        locks=16,  # AIE2TargetModel::getNumLocks: 16 per compute tile
        data_bytes=64 * 1024,  # AIE2TargetModel::getLocalMemorySize = 0x10000; AM020: 64 KB data memory
        bd_dims=3,  # AM020: tile DMA BDs address 3 dimensions
        bd_wrap=1023,  # AIE2TargetModel::getDmaBdWrapBits: 10-bit wraps
        bd_step=1 << 13,  # AIE2TargetModel::getDmaBdStepBits: 13-bit steps on a core tile (unverified in a test)
    ),
    memtile=TileLimits(
        dma_in=6,  # AM020 ch. 5 (memory tile DMA: 6 S2MM + 6 MM2S)
        dma_out=6,
        buffer_descriptors=48,  # AIE2TargetModel::getNumBDs(memtile) = 48 ("has more than 48 blocks")
        locks=64,  # AIE2TargetModel::getNumLocks(memtile) = 64
        data_bytes=512 * 1024,  # AIE2TargetModel::getMemTileSize = 0x80000; AM020: 512 KB
        bd_dims=4,  # AM020: memtile BDs address 4 dimensions
        bd_wrap=1023,  # bd_verify_size_stride_bounds.mlir: memtile wrap 10 bits, 1023 accepted, 1024 refused
        bd_step=1 << 17,  # bd_verify_size_stride_bounds.mlir: "a MemTile's step field is 17-bit (max stride 131072)"
    ),
    shim=TileLimits(
        dma_in=2,  # AM020 ch. 6 (shim DMA: 2 S2MM + 2 MM2S per column)
        dma_out=2,
        buffer_descriptors=16,  # AIE2TargetModel::getNumBDs(shim) = 16 (badshim_toomanybds.mlir)
        locks=16,  # AIE2TargetModel::getNumLocks(shim) = 16
        data_bytes=0,  # the shim has no memory: it reads and writes DDR
        bd_dims=4,  # npu_dma_memcpy_nd: 3 dimensions + the repeat dimension d3
        bd_wrap=1023,  # AIE2TargetModel::getDmaBdWrapBits: 10-bit wraps
        bd_step=1 << 20,  # bd_verify_size_stride_bounds.mlir: shim step 20 bits, 1048576 accepted, 1048577 refused
    ),
    program_bytes=16 * 1024,  # AM020: 16 KB program memory per core
    bd_inner_words=1023,  # NpuDmaMemcpyNdOp::verify: "Size 0/1 exceeds the [0:1023] range" (bad_npu_nd.mlir)
    bd_repeat=64,  # NpuDmaMemcpyNdOp::verify: "Size 3 exceeds the [1:64] range"
    bd_stride_words=1 << 20,  # NpuDmaMemcpyNdOp::verify: "Stride i exceeds the [1:1048576] range"
    address_bytes=4,  # NpuDmaMemcpyNdOp::verify: offsets, strides, innermost sizes in 4-byte units
    element_bits=32,  # NpuDmaMemcpyNdOp::verify: "Maximum element bit width allowed is 32bits." (bad_dma_to_npu_datatype.mlir)
    mmul_bf16=(4, 8, 4),  # mlir-aie whole_array.py: aie2 bf16 mmul r, s, t
)

NPU2 = Limits(
    profile="npu2",
    # AIE2P (AM027) keeps the AIE-ML tile's DMA, BD, lock and memory figures; mlir-aie's
    # NPU2TargetModel derives from AIE2TargetModel and overrides none of these methods.
    compute=NPU1.compute,
    memtile=NPU1.memtile,
    shim=NPU1.shim,
    program_bytes=16 * 1024,  # AM027: 16 KB program memory (unverified: taken equal to AIE2)
    bd_inner_words=1023,  # the npu2 cases of bd_verify_size_stride_bounds.mlir give the same ranges
    bd_repeat=64,
    bd_stride_words=1 << 20,
    address_bytes=4,
    element_bits=32,
    mmul_bf16=(8, 8, 8),  # mlir-aie whole_array.py: aie2p bf16 mmul r, s, t
)

LIMITS = {limits.profile: limits for limits in (NPU1, NPU2)}


def limits_for(profile: str) -> Limits:
    """The limits of ``profile``; ValueError naming the valid ones otherwise."""
    try:
        return LIMITS[profile]
    except KeyError:
        raise ValueError(f"no hardware limits for profile {profile!r}: valid are {', '.join(LIMITS)}") from None
