"""The design set: which xclbins and instruction streams Whisper's encoders need on an NPU, planned
against the device's hardware contexts and its design switches, and the build list CMakeLists.txt reads.

GEMMs come in two variants (``kernels/matmul/spec.py``): one xclbin per K (K baked in, npu.md), or one
dynamic-K xclbin (K in the instruction stream, after mlir-aie's ``whole_array_dyn.py``). ``plan_gemms``
chooses between them by the cost model: the array switches designs whenever consecutive launches use
different xclbins (about 1.4 ms a switch, npu.md), and a Whisper encoder layer with one GEMM design per
K switches 4 times (K = d -> attention -> K = d -> K = 4 d -> the next layer's K = d), with the
dynamic-K design twice; the dynamic design in turn pays its runtime parameters on every launch.
Attention is one xclbin per head dimension and precision, softmax one per row length; one instruction
stream per runtime shape. Every design needs its own hardware context while in use (6 system-wide on
npu1): ``plan`` raises a planning error when a model's set needs more than the device has.

    python -m xdna_ep.kernels.designs --profile npu1 [--precision bf16 --precision accurate] [--cmake]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from xdna_ep.ep import cost_model
from xdna_ep.ep.device import get_profile
from xdna_ep.kernels.attention.spec import AttentionSpec
from xdna_ep.kernels.matmul.spec import MatmulSpec, is_matmul_design
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


@dataclass(frozen=True)
class GemmPlan:
    """How a session's GEMMs map to xclbins, with the modelled cost of one pass either way.

    Steady state: passes repeat, so the switch from a pass's last launch to the next pass's first
    counts. Compute is the same either way (the dynamic design is modelled at the static GEMM rate,
    see ``cost_model.gemm_compute_s``); what differs is design switches and runtime parameters.
    """

    dynamic_k: bool  # True: one dynamic-K GEMM design; False: one GEMM design per K
    profile: str
    gemm_launches: int  # GEMM launches per pass
    per_k_designs: tuple[str, ...]  # every design of the pass with one GEMM xclbin per K, first use first
    dynamic_designs: tuple[str, ...]  # the same with one dynamic-K GEMM xclbin
    per_k_switches: int  # design switches per pass with one GEMM design per K
    dynamic_switches: int  # design switches per pass with the dynamic-K design
    per_k_s: float  # modelled switch time per pass, one design per K
    dynamic_s: float  # modelled switch + runtime-parameter time per pass, dynamic K

    @property
    def designs(self) -> tuple[str, ...]:
        """The designs the chosen plan uses (one hardware context each)."""
        return self.dynamic_designs if self.dynamic_k else self.per_k_designs

    @property
    def switches(self) -> int:
        """Design switches per pass of the chosen plan."""
        return self.dynamic_switches if self.dynamic_k else self.per_k_switches

    def gemm_spec(self, k: int) -> MatmulSpec:
        """The GEMM design a launch of (padded) K runs on under this plan."""
        return MatmulSpec(k=None if self.dynamic_k else k, profile=self.profile)

    @property
    def reason(self) -> str:
        """The choice and why, in one line with both modelled times."""
        if not self.gemm_launches:
            return "no GEMM on the NPU"
        device = get_profile(self.profile)
        runtime_parameters = (
            f"{self.gemm_launches} launches x {device.runtime_parameters_s * 1e6:.0f} us of runtime parameters"
        )
        per_k = f"{_count(self.per_k_designs, 'design')}, {self.per_k_switches} switches, {self.per_k_s * 1e3:.1f} ms"
        dynamic = (
            f"{_count(self.dynamic_designs, 'design')}, {self.dynamic_switches} switches + {runtime_parameters}, "
            f"{self.dynamic_s * 1e3:.1f} ms"
        )
        if len(self.per_k_designs) > device.hw_contexts:
            return (
                f"one dynamic-K GEMM design: one per K needs {len(self.per_k_designs)} hardware contexts, "
                f"{device.name} has {device.hw_contexts}"
            )
        if self.dynamic_k:
            return f"one dynamic-K GEMM design: {dynamic} < one per K: {per_k} (per pass, modelled)"
        return f"one GEMM design per K: {per_k} <= dynamic K: {dynamic} (per pass, modelled)"


def _count(items: Sequence, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def switches_per_pass(launch_designs: Sequence[str]) -> int:
    """Design switches of one pass in steady state (its first launch follows the previous pass's last)."""
    previous = [*launch_designs[-1:], *launch_designs[:-1]]
    return sum(design != before for design, before in zip(launch_designs, previous))


def plan_gemms(launch_designs: Sequence[str], profile: str = "npu1") -> GemmPlan:
    """Choose one GEMM design per K or one dynamic-K design for a pass launching ``launch_designs``.

    ``launch_designs``: the design of every launch of one pass, in order, GEMMs named per K as the cost
    model names them (``Estimate.design``). The dynamic design wins when its switches plus its runtime
    parameters model cheaper than the per-K switches, or when one design per K would not fit the
    device's hardware contexts.
    """
    device = get_profile(profile)
    dynamic_name = MatmulSpec(k=None, profile=device.name).name
    dynamic_sequence = [dynamic_name if is_matmul_design(name) else name for name in launch_designs]
    gemm_launches = sum(is_matmul_design(name) for name in launch_designs)
    per_k_switches = switches_per_pass(launch_designs)
    dynamic_switches = switches_per_pass(dynamic_sequence)
    per_k_s = per_k_switches * device.design_switch_s
    dynamic_s = dynamic_switches * device.design_switch_s + gemm_launches * device.runtime_parameters_s
    per_k_designs = tuple(dict.fromkeys(launch_designs))
    dynamic_k = gemm_launches > 0 and (len(per_k_designs) > device.hw_contexts or dynamic_s < per_k_s)
    return GemmPlan(
        dynamic_k=dynamic_k,
        profile=device.name,
        gemm_launches=gemm_launches,
        per_k_designs=per_k_designs,
        dynamic_designs=tuple(dict.fromkeys(dynamic_sequence)),
        per_k_switches=per_k_switches,
        dynamic_switches=dynamic_switches,
        per_k_s=per_k_s,
        dynamic_s=dynamic_s,
    )


def plan_session(report) -> GemmPlan:
    """The GEMM plan of a compiled session, from its pass report (NPU nodes in graph order, one launch each)."""
    return plan_gemms([placement.design for placement in report.placed("npu")], report.profile)


def encoder_layer_gemms(d_model: int, profile: str = "npu1", precision: str = "bf16") -> list[tuple[int, int, int]]:
    """Padded (M, K, N) of one Whisper encoder layer's GEMMs in launch order: q, k, v, out, fc1, fc2."""
    device = get_profile(profile)
    parts = cost_model.GEMM_PARTS[cost_model.check_precision(precision)]
    shapes = [(d_model, d_model)] * 4 + [(d_model, 4 * d_model), (4 * d_model, d_model)]
    padded = (cost_model.padded_gemm_shape(device, N_AUDIO_CTX, k, n) for k, n in shapes)
    return [(m_pad, parts * k_pad, n_pad) for m_pad, k_pad, n_pad in padded]


def encoder_designs(d_model: int, n_head: int, profile: str = "npu1", precision: str = "bf16") -> list[Design]:
    """The designs one Whisper encoder pass uses: the GEMMs (as ``plan_gemms`` chooses), the attention."""
    device = get_profile(profile)
    gemms = encoder_layer_gemms(d_model, profile, precision)
    n_q, n_kv, d = cost_model.padded_attention_shape(device, N_AUDIO_CTX, N_AUDIO_CTX, HEAD_DIM)
    attention = AttentionSpec(head_dim=d, precision=precision, profile=profile)
    names = [MatmulSpec(k=k, profile=profile).name for _, k, _ in gemms]
    gemm_plan = plan_gemms([*names[:3], attention.name, *names[3:]], profile)
    by_design: dict[MatmulSpec, set[tuple[int, int, int]]] = {}
    for shape in gemms:
        by_design.setdefault(gemm_plan.gemm_spec(shape[1]), set()).add(shape)
    designs = [Design(spec, tuple(sorted(shapes))) for spec, shapes in by_design.items()]
    designs.sort(key=lambda design: design.spec.k or 0)
    designs.append(Design(attention, ((n_head, n_q, n_kv),)))
    return designs


@dataclass(frozen=True)
class SwitchPlan:
    """How an encoder pass shares the array between its GEMM design and its attention design.

    - time-shared (today's plan): both designs take every column in turn, the array switches designs
      twice a layer (GEMMs -> attention -> GEMMs; the dynamic-K design makes all GEMMs one xclbin);
    - split: each design built for half the columns, both resident in their own hardware contexts at
      once: no switch, but each runs on half the cores (the whole-array walk scaled by the column ratio);
    - one xclbin holding both core programs (OpenFlowLM's one-xclbin encoder runs GEMMs only): every
      compute tile would hold both designs' buffers at once (``combined_tile_bytes``).
    The planner takes the cheapest option that fits.
    """

    profile: str
    switches: int  # design switches per pass, time-shared
    time_shared_s: float  # compute + switches per pass
    split_s: float  # compute per pass on half the columns each, no switch
    combined_tile_bytes: int  # data memory per compute tile of one xclbin with both programs
    tile_data_bytes: int

    @property
    def choice(self) -> str:
        return "split" if self.split_s < self.time_shared_s else "time-shared"

    @property
    def reason(self) -> str:
        combined = (
            f"one xclbin for both would need {self.combined_tile_bytes / 1024:.0f} KB per tile of "
            f"{self.tile_data_bytes / 1024:.0f} KB"
        )
        times = (
            f"time-shared {self.time_shared_s * 1e3:.1f} ms ({self.switches} switches) vs split array "
            f"{self.split_s * 1e3:.1f} ms (no switch, half the columns each)"
        )
        return f"{self.choice}: {times}; {combined} (per pass, modelled)"


def combined_tile_bytes(profile: str = "npu1", precision: str = "bf16", head_dim: int = HEAD_DIM) -> int:
    """Data memory per compute tile if one xclbin held the GEMM and the attention core programs: both
    designs' FIFO buffers (depth 2, as ``design.py``), the attention state and the kernels' static
    buffers; stacks not counted. An estimate from the designs' shapes (issue 10's verifier counts a
    design exactly)."""
    device = get_profile(profile)
    m, k, n = device.gemm_tile
    parts = cost_model.ATTENTION_PARTS[precision]
    q_rows, kv_tile = cost_model.ATTENTION_Q_ROWS_PER_CORE, cost_model.ATTENTION_KV_TILE
    bf16, fp32, depth = 2, 4, 2
    gemm = depth * (m * k * bf16 + k * n * bf16 + m * n * fp32)
    attention = depth * (parts * q_rows * head_dim * bf16 + 2 * parts * kv_tile * head_dim * bf16 + q_rows * head_dim * fp32)
    attention += (q_rows * head_dim + 2 * q_rows + 2) * fp32  # state
    attention += q_rows * kv_tile * (fp32 + parts * bf16)  # scores, probabilities (attention.cc statics)
    return gemm + attention


def plan_encoder_switches(
    d_model: int, n_head: int, n_layers: int, profile: str = "npu1", precision: str = "bf16"
) -> SwitchPlan:
    """Model one encoder pass time-shared (with its design switches) and split over the columns."""
    import dataclasses

    device = get_profile(profile)
    half = dataclasses.replace(device, columns=max(1, device.columns // 2))
    parts = cost_model.ATTENTION_PARTS[cost_model.check_precision(precision)]

    def compute(on) -> float:
        shapes = [(d_model, d_model)] * 4 + [(d_model, 4 * d_model), (4 * d_model, d_model)]
        gemm_parts = cost_model.GEMM_PARTS[precision]
        layer = 0.0
        for index, (k, n) in enumerate(shapes):
            m_pad, k_pad, n_pad = cost_model.padded_gemm_shape(on, N_AUDIO_CTX, k, n)
            layer += cost_model.gemm_compute_s(on, m_pad, gemm_parts * k_pad, n_pad, dynamic_k=True, gelu=index == 4)
        q, kv, d = cost_model.padded_attention_shape(on, N_AUDIO_CTX, N_AUDIO_CTX, HEAD_DIM)
        layer += cost_model.attention_compute_s(on, n_head, q, kv, d, parts)
        return n_layers * layer

    switches = 2 * n_layers
    whole_array_s = compute(device)
    # The descriptions exist for the whole array only (a design's columns come from its profile), so a
    # half-array design is modelled as the whole-array walk scaled by the column ratio: each column
    # streams its own share of the output through the same per-column dataflow.
    split_s = whole_array_s * device.columns / half.columns
    return SwitchPlan(
        profile=device.name,
        switches=switches,
        time_shared_s=whole_array_s + switches * device.design_switch_s,
        split_s=split_s,
        combined_tile_bytes=combined_tile_bytes(profile, precision),
        tile_data_bytes=device.tile_data_bytes,
    )


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


def build_list(profile: str, precisions: tuple[str, ...], encoders: dict | None = None) -> list[Design]:
    """Every design of every Whisper encoder size (``encoders``: name -> (d_model, n_head), default all),
    merged (shapes of the same xclbin together)."""
    encoders = WHISPER_ENCODERS if encoders is None else encoders
    merged: dict[str, tuple[object, set]] = {}
    for d_model, n_head in encoders.values():
        for precision in precisions:
            for design in plan(encoder_designs(d_model, n_head, profile, precision), profile):
                merged.setdefault(design.spec.name, (design.spec, set()))[1].update(design.shapes)
    softmax = SoftmaxSpec(cols=cost_model.round_up(N_AUDIO_CTX, cost_model.SOFTMAX_COL_MULTIPLE), profile=profile)
    rows = cost_model.round_up(max(n_head for _, n_head in encoders.values()) * N_AUDIO_CTX, softmax.row_multiple)
    merged[softmax.name] = (softmax, {(rows,)})
    return [Design(spec, tuple(sorted(shapes))) for spec, shapes in merged.values()]


def describe(spec, shape: tuple[int, ...]):
    """The dataflow description (``kernels/dataflow.py``) of ``spec`` at the runtime ``shape``."""
    if spec.kind == "matmul":
        from xdna_ep.kernels.matmul.design import describe as describe_matmul

        return describe_matmul(spec, *shape)
    if spec.kind == "attention":
        from xdna_ep.kernels.attention.design import describe as describe_attention

        return describe_attention(spec, *shape)
    from xdna_ep.kernels.softmax.design import describe as describe_softmax

    return describe_softmax(spec, *shape)


def script_args(spec, shape: tuple[int, ...]) -> list[str]:
    """Arguments of the design script that emits the MLIR of ``spec`` for the runtime ``shape``."""
    if spec.kind == "matmul":
        m, k, n = shape
        return ["--profile", spec.profile, "-M", str(m), "-K", str(k), "-N", str(n)] + (
            ["--dynamic-k"] if spec.dynamic_k else []
        )
    if spec.kind == "attention":
        heads, n_q, n_kv = shape
        return ["--profile", spec.profile, "--head-dim", str(spec.head_dim), "--precision", spec.precision,
                "--heads", str(heads), "--n-q", str(n_q), "--n-kv", str(n_kv)]  # fmt: skip
    (rows,) = shape
    return ["--profile", spec.profile, "--cols", str(spec.cols), "--rows", str(rows)]


def compile_defines(spec) -> list[str]:
    """-D flags of the kernel's C++ for ``spec``."""
    r, s, t = get_profile(spec.profile).intrinsic_bf16
    mmul = [f"-DMMUL_R={r}", f"-DMMUL_S={s}", f"-DMMUL_T={t}"]  # the profile's bf16 aie::mmul shape
    if spec.kind == "matmul":
        m, k, n = spec.tile
        return [f"-DDIM_M={m}", f"-DDIM_K={k}", f"-DDIM_N={n}", *mmul]
    if spec.kind == "attention":
        flags = [f"-DHEAD_DIM={spec.head_dim}", f"-DQ_ROWS={cost_model.ATTENTION_Q_ROWS_PER_CORE}",
                 f"-DKV_TILE={cost_model.ATTENTION_KV_TILE}", *mmul]  # fmt: skip
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
