"""The row-softmax design: y = softmax(x) along the last axis of a (rows, cols) fp32 matrix.

Rows are spread over all cores; each row is processed in fp32 throughout (max subtracted, exp by
range reduction + polynomial, fp32 sum, one reciprocal), so both precisions use the same design.
The padded row length is baked into the xclbin (the cores' row buffers: one design per column
bucket); the padded number of rows lives in the instruction stream, the true column count in the
params buffer (padding columns are ignored and written as 0).

Device buffers, in runtime-sequence order (group ids 3, 4, 5):
- ``x``: f32 [rows_pad, cols_pad]
- ``params``: f32 [PARAMS_WORDS]: word 0 = true number of columns
- ``y``: f32 [rows_pad, cols_pad]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xdna_ep.ep.cost_model import SOFTMAX_COL_MULTIPLE
from xdna_ep.ep.device import DeviceProfile, get_profile
from xdna_ep.kernels.artifacts import ArgSpec, sim_instruction_words, sim_xclbin_manifest

KIND = "softmax"
PARAMS_WORDS = 16
MAX_COLS = 2048  # a row in and out, fp32, double-buffered (32 KB) must fit a core's 64 KB data memory

ARGS = (
    ArgSpec("x", 3, "f32", "in"),
    ArgSpec("params", 4, "f32", "in"),
    ArgSpec("y", 5, "f32", "out"),
)


@dataclass(frozen=True)
class SoftmaxSpec:
    """One compiled softmax design (one xclbin): its padded row length and the NPU it is built for."""

    cols: int  # padded row length baked into the xclbin
    profile: str = "npu1"
    kind: ClassVar[str] = KIND

    def __post_init__(self) -> None:
        get_profile(self.profile)
        if self.cols <= 0 or self.cols % SOFTMAX_COL_MULTIPLE or self.cols > MAX_COLS:
            raise ValueError(
                f"softmax design cols={self.cols} must be a positive multiple of {SOFTMAX_COL_MULTIPLE}, "
                f"at most {MAX_COLS}"
            )

    @property
    def device_profile(self) -> DeviceProfile:
        return get_profile(self.profile)

    @property
    def row_multiple(self) -> int:
        return self.device_profile.cores

    @property
    def name(self) -> str:
        return f"xdna_softmax_c{self.cols}_{self.profile}"

    @property
    def xclbin_name(self) -> str:
        return f"{self.name}.xclbin"

    def insts_name(self, rows: int) -> str:
        return f"{self.name}_r{rows}.insts.bin"

    @property
    def c_symbol(self) -> str:
        return "xdna_softmax_row_f32"

    @property
    def object_name(self) -> str:
        return "xdna_softmax.o"

    @property
    def args(self) -> tuple[ArgSpec, ...]:
        return ARGS

    def check_shape(self, rows: int) -> None:
        if rows <= 0 or rows % self.row_multiple:
            raise ValueError(f"{self.name}: rows={rows} must be a positive multiple of {self.row_multiple}")

    def design_shape(self, insts_shape: tuple[int, ...]) -> tuple[int]:
        """(rows,) of an instruction stream's (rows, cols); ValueError if its cols is not this design's."""
        rows, cols = insts_shape
        if cols != self.cols:
            raise ValueError(f"instruction stream for rows of {cols} on {self.name}, built for {self.cols}")
        return (rows,)

    def arg_bytes(self, rows: int) -> dict[str, int]:
        return {"x": rows * self.cols * 4, "params": PARAMS_WORDS * 4, "y": rows * self.cols * 4}

    def instruction_words(self, rows: int):
        self.check_shape(rows)
        return sim_instruction_words(KIND, (rows, self.cols))

    def sim_manifest(self) -> dict:
        return sim_xclbin_manifest(KIND, self.name, ARGS, {"profile": self.profile, "cols": self.cols})
