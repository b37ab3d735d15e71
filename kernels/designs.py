"""The design set: which xclbins and instruction streams Whisper's encoders need on an NPU, planned
against the device's hardware contexts, and the build list CMakeLists.txt reads.

One xclbin per GEMM K (K is baked in, npu.md), per attention head dimension and precision, per
softmax row length; one instruction stream per runtime shape. Every design needs its own hardware
context while in use (6 system-wide on npu1): ``plan`` raises a planning error when a model's set
needs more than the device has.

    python -m xdna_ep.kernels.designs --profile npu1 [--precision bf16 --precision accurate] [--cmake]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from xdna_ep.ep import cost_model
from xdna_ep.ep.device import get_profile
from xdna_ep.kernels.attention.spec import AttentionSpec
from xdna_ep.kernels.matmul.spec import MatmulSpec
from xdna_ep.kernels.softmax.spec import SoftmaxSpec

# Whisper encoders: name -> (d_model, n_head); head_dim is 64 in every size; 1500 positions
WHISPER_ENCODERS = {"tiny": (384, 6), "base": (512, 8), "small": (768, 12)}
N_AUDIO_CTX = 1500
HEAD_DIM = 64

KERNEL_SOURCES = {"matmul": "matmul/matmul.cc", "attention": "attention/attention.cc", "softmax": "softmax/softmax.cc"}
DESIGN_SCRIPTS = {"matmul": "matmul/design.py", "attention": "attention/design.py", "softmax": "softmax/design.py"}


@dataclass(frozen=True)
class Design:
    """One xclbin and the runtime shapes it needs instruction streams for."""

    spec: object  # MatmulSpec, AttentionSpec or SoftmaxSpec
    shapes: tuple[tuple[int, ...], ...]  # arguments of spec.insts_name / the design script


def encoder_designs(d_model: int, n_head: int, profile: str = "npu1", precision: str = "bf16") -> list[Design]:
    """The designs one Whisper encoder pass uses: the GEMMs of the projections and MLP, the attention."""
    device = get_profile(profile)
    parts = cost_model.GEMM_PARTS[cost_model.check_precision(precision)]
    gemms: dict[int, set[tuple[int, int]]] = {}
    for k, n in ((d_model, d_model), (d_model, 4 * d_model), (4 * d_model, d_model)):
        m_pad, k_pad, n_pad = cost_model.padded_gemm_shape(device, N_AUDIO_CTX, k, n)
        gemms.setdefault(parts * k_pad, set()).add((m_pad, n_pad))
    designs = [Design(MatmulSpec(k=k, profile=profile), tuple(sorted(shapes))) for k, shapes in sorted(gemms.items())]
    n_q, n_kv, d = cost_model.padded_attention_shape(device, N_AUDIO_CTX, N_AUDIO_CTX, HEAD_DIM)
    designs.append(Design(AttentionSpec(head_dim=d, precision=precision, profile=profile), ((n_head, n_q, n_kv),)))
    return designs


def plan(designs: list[Design], profile: str = "npu1") -> list[Design]:
    """``designs`` if they fit the device's hardware contexts; ValueError (a planning error) if not."""
    device = get_profile(profile)
    if len(designs) > device.hw_contexts:
        names = ", ".join(design.spec.name for design in designs)
        raise ValueError(
            f"planning error: {len(designs)} designs ({names}) need {len(designs)} hardware contexts, "
            f"{device.name} has {device.hw_contexts}"
        )
    return designs


def build_list(profile: str, precisions: tuple[str, ...]) -> list[Design]:
    """Every design of every Whisper encoder size, merged (shapes of the same xclbin together)."""
    merged: dict[str, tuple[object, set]] = {}
    for d_model, n_head in WHISPER_ENCODERS.values():
        for precision in precisions:
            for design in plan(encoder_designs(d_model, n_head, profile, precision), profile):
                merged.setdefault(design.spec.name, (design.spec, set()))[1].update(design.shapes)
    softmax = SoftmaxSpec(cols=cost_model.round_up(N_AUDIO_CTX, cost_model.SOFTMAX_COL_MULTIPLE), profile=profile)
    rows = cost_model.round_up(max(n_head for _, n_head in WHISPER_ENCODERS.values()) * N_AUDIO_CTX, softmax.row_multiple)
    merged[softmax.name] = (softmax, {(rows,)})
    return [Design(spec, tuple(sorted(shapes))) for spec, shapes in merged.values()]


def script_args(spec, shape: tuple[int, ...]) -> list[str]:
    """Arguments of the design script that emits the MLIR of ``spec`` for the runtime ``shape``."""
    if spec.kind == "matmul":
        m, n = shape
        return ["--profile", spec.profile, "-M", str(m), "-K", str(spec.k), "-N", str(n)]
    if spec.kind == "attention":
        heads, n_q, n_kv = shape
        return ["--profile", spec.profile, "--head-dim", str(spec.head_dim), "--precision", spec.precision,
                "--heads", str(heads), "--n-q", str(n_q), "--n-kv", str(n_kv)]  # fmt: skip
    (rows,) = shape
    return ["--profile", spec.profile, "--cols", str(spec.cols), "--rows", str(rows)]


def compile_defines(spec) -> list[str]:
    """-D flags of the kernel's C++ for ``spec``."""
    if spec.kind == "matmul":
        m, k, n = spec.tile
        return [f"-DDIM_M={m}", f"-DDIM_K={k}", f"-DDIM_N={n}"]
    if spec.kind == "attention":
        flags = [f"-DHEAD_DIM={spec.head_dim}", f"-DQ_ROWS={cost_model.ATTENTION_Q_ROWS_PER_CORE}",
                 f"-DKV_TILE={cost_model.ATTENTION_KV_TILE}"]  # fmt: skip
        return flags + (["-DXDNA_ACCURATE"] if spec.precision == "accurate" else [])
    return []


def cmake_lines(designs: list[Design]) -> list[str]:
    """One line per instruction stream: name|kind|source|object|defines|script|args|xclbin|insts|first.

    Fields are separated by '|', list items by ','. ``first`` is 1 on the line whose MLIR also builds
    the xclbin (every shape of a design gives the same array configuration).
    """
    lines = []
    for design in designs:
        spec = design.spec
        for index, shape in enumerate(design.shapes):
            lines.append("|".join([
                f"{spec.name}_{'_'.join(map(str, shape))}", spec.kind, KERNEL_SOURCES[spec.kind], spec.object_name,
                ",".join(compile_defines(spec)), DESIGN_SCRIPTS[spec.kind], ",".join(script_args(spec, shape)),
                spec.xclbin_name, spec.insts_name(*shape), "1" if index == 0 else "0",
            ]))  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="npu1", choices=("npu1", "npu2"))
    parser.add_argument("--precision", action="append", choices=cost_model.PRECISIONS)
    parser.add_argument("--cmake", action="store_true", help="print the build list CMakeLists.txt reads")
    args = parser.parse_args(argv)
    designs = build_list(args.profile, tuple(args.precision or ("bf16",)))
    if args.cmake:
        print("\n".join(cmake_lines(designs)))
        return 0
    for design in designs:
        shapes = ", ".join(spec_shape for spec_shape in (design.spec.insts_name(*s) for s in design.shapes))
        print(f"{design.spec.xclbin_name}: {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
