"""What a compiled NPU design is made of, and where its files live.

A design is one xclbin (the array configuration: core programs, DMA and switch setup; for the GEMM,
K is baked in) plus one instruction stream per runtime shape (``insts.bin``: the runtime sequence of
shim DMA transfers, raw uint32 words). The kernel specs (``kernels/<kind>/spec.py``) derive every file
and symbol name; CMake builds the real files into ``build/kernels`` (or ``$XDNA_EP_KERNEL_DIR``).

The simulated NPU cannot execute a real xclbin. For it, the same file names are generated from the
spec into ``$XDNA_EP_HOME/kernels-sim``: a JSON "xclbin" that says in its first field that it is a
simulation artifact and carries what the simulator checks (kernel name, arguments with group ids and
directions, design parameters), and an instruction stream of uint32 words starting with a magic
number, carrying the padded shapes the runtime sequence would encode.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KERNEL_DIR_ENV = "XDNA_EP_KERNEL_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KERNEL_DIR = PROJECT_ROOT / "build" / "kernels"

# every mlir-aie design exposes one kernel of this name (mlir-aie python/utils/xrt.py)
MLIR_AIE_KERNEL = "MLIR_AIE"
# opcode of an NPU launch: kernel(3, insts_bo, n_insts, bo...) (npu.md, pyxrt call sequence)
NPU_LAUNCH_OPCODE = 3
# group id of the instruction stream argument; data arguments start at 3 (npu.md)
INSTRUCTION_GROUP_ID = 1
FIRST_DATA_GROUP_ID = 3

SIM_XCLBIN_FORMAT = "xdna-ep simulated xclbin: generated from the kernel spec, NOT an AMD xclbin"
SIM_INSTS_MAGIC = 0x4D495358  # "XSIM" little-endian
SIM_INSTS_VERSION = 1
KIND_CODES = {"matmul": 1, "attention": 2, "softmax": 3}


@dataclass(frozen=True)
class ArgSpec:
    """One buffer argument of a design's runtime sequence."""

    name: str
    group_id: int  # kernel.group_id(index) of this argument
    dtype: str  # element type in device memory: "bf16" (uint16 bits), "f32"
    direction: str  # "in" or "out"

    @property
    def itemsize(self) -> int:
        return {"bf16": 2, "f32": 4}[self.dtype]


def kernel_dir() -> Path:
    """Where CMake puts the real xclbins and instruction streams."""
    return Path(os.environ.get(KERNEL_DIR_ENV) or DEFAULT_KERNEL_DIR).expanduser()


def sim_kernel_dir() -> Path:
    """Where the simulated NPU's generated xclbins and instruction streams go."""
    from xdna_ep.models.registry import home

    return home() / "kernels-sim"


def sim_xclbin_manifest(kind: str, name: str, args: tuple[ArgSpec, ...], params: dict) -> dict:
    """The content of a simulated xclbin (see the module docstring)."""
    return {
        "format": SIM_XCLBIN_FORMAT,
        "name": name,
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"xdna-ep/{name}")),
        "kind": kind,
        "params": params,
        "kernels": [
            {
                "name": MLIR_AIE_KERNEL,
                "args": [
                    {"index": 0, "name": "opcode", "kind": "scalar"},
                    {"index": 1, "name": "instr", "kind": "buffer", "group_id": INSTRUCTION_GROUP_ID},
                    {"index": 2, "name": "ninstr", "kind": "scalar"},
                    *[
                        {
                            "index": FIRST_DATA_GROUP_ID + i,
                            "name": arg.name,
                            "kind": "buffer",
                            "group_id": arg.group_id,
                            "dtype": arg.dtype,
                            "direction": arg.direction,
                        }
                        for i, arg in enumerate(args)
                    ],
                ],
            }
        ],
    }


def sim_instruction_words(kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """A simulated instruction stream: magic, version, kind code, number of shape words, shape."""
    return np.array(
        [SIM_INSTS_MAGIC, SIM_INSTS_VERSION, KIND_CODES[kind], len(shape), *shape], dtype=np.uint32
    )


def parse_sim_instruction_words(words: np.ndarray) -> tuple[str, tuple[int, ...]]:
    """(kind, shape) of a simulated instruction stream; ValueError if it is not one."""
    words = np.asarray(words, dtype=np.uint32)
    if len(words) < 4 or int(words[0]) != SIM_INSTS_MAGIC:
        raise ValueError("not a simulated instruction stream (bad magic number)")
    if int(words[1]) != SIM_INSTS_VERSION:
        raise ValueError(f"simulated instruction stream version {int(words[1])}, expected {SIM_INSTS_VERSION}")
    kinds = {code: kind for kind, code in KIND_CODES.items()}
    kind = kinds.get(int(words[2]))
    n_shape = int(words[3])
    if kind is None or len(words) < 4 + n_shape:
        raise ValueError("corrupt simulated instruction stream")
    return kind, tuple(int(w) for w in words[4 : 4 + n_shape])


def write_sim_artifacts(directory: Path, xclbin_name: str, manifest: dict) -> Path:
    """Write a simulated xclbin (if absent or different) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / xclbin_name
    text = json.dumps(manifest, indent=1, sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def write_sim_insts(directory: Path, insts_name: str, words: np.ndarray) -> Path:
    """Write a simulated instruction stream (if absent or different) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / insts_name
    data = np.asarray(words, dtype="<u4").tobytes()
    if not path.is_file() or path.read_bytes() != data:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def read_insts(path: Path) -> np.ndarray:
    """An instruction stream file as uint32 words (binary insts.bin)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"instruction stream {path} does not exist") from None
    if len(data) % 4:
        raise ValueError(f"instruction stream {path} is {len(data)} bytes, not a whole number of uint32 words")
    return np.frombuffer(data, dtype="<u4").copy()
