"""``xdna-ep inspect``: what the graph passes fuse in a Whisper model and where each fused node runs.

    xdna-ep inspect --model base --profile npu1
    xdna-ep inspect --model PATH/encoder_model.onnx --json
    xdna-ep inspect --model tiny.en --explain

Per session, a table of the fused nodes (kind, shape, GFLOPs, placement, estimated NPU and CPU time,
reason) and totals: the share of the FLOPs placed on the NPU, among the fused nodes and among all
matrix work (fused nodes plus every matrix op left unfused: MatMul, Gemm, Conv, ONNX Attention and
ONNX Runtime's contrib Attention / MultiHeadAttention / FusedMatMul, counted per op type), and the
input sizes the shapes were taken at (found from the graph's structure, or given with ``--dims``).
``--explain`` adds every candidate a pass did not fuse, with the reason.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

SESSION_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


@dataclass(frozen=True)
class SessionInspection:
    """Inspection of one ONNX file."""

    session: str
    role: str
    report: object  # graph_passes.orchestrator.PassReport
    unfused_flops: int  # FLOPs of the matrix ops left unfused (at representative shapes)
    unfused_by_op: dict[str, tuple[int, int]] | None = None  # "domain.op" -> (nodes, FLOPs) left unfused

    @property
    def fused_flops(self) -> int:
        return sum(p.flops for p in self.report.placements)

    @property
    def npu_flops(self) -> int:
        return sum(p.flops for p in self.report.placements if p.placement == "npu")

    def totals(self) -> dict:
        fused, npu = self.fused_flops, self.npu_flops
        matrix = fused + self.unfused_flops
        chosen = [p.npu_s if p.placement == "npu" else p.cpu_s for p in self.report.placements]
        cpu_only = [p.cpu_s for p in self.report.placements]
        return {
            "fused_nodes": len(self.report.placements),
            "npu_nodes": len(self.report.placed("npu")),
            "fused_gflops": fused / 1e9,
            "npu_gflops": npu / 1e9,
            "unfused_matrix_gflops": self.unfused_flops / 1e9,
            "npu_share_of_fused_flops": npu / fused if fused else 0.0,
            "npu_share_of_matrix_flops": npu / matrix if matrix else 0.0,
            "estimated_s_as_placed": sum(s for s in chosen if s is not None),
            "estimated_s_all_cpu": sum(s for s in cpu_only if s is not None),
        }


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny.en", help="tiny.en, base, a model folder or one .onnx file")
    parser.add_argument("--profile", default="npu1", choices=("npu1", "npu2"), help="NPU the cost model plans for")
    parser.add_argument("--placement", default="auto", help='auto, npu, cpu, or per kind: "npu,softmax=cpu"')
    parser.add_argument("--precision", default="bf16", choices=("bf16", "accurate"), help="NPU precision to plan for")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--explain", action="store_true", help="also list the candidates that did not fuse, and why")
    parser.add_argument(
        "--dims", default="", help='sizes to plan for instead of the representative ones: "past_decoder_sequence_length=64,batch_size=2"'
    )


def parse_dims(spec: str) -> dict[str, int]:
    """"name=size,name=size" -> {name: size}; ValueError naming the bad part."""
    dims: dict[str, int] = {}
    for part in (part.strip() for part in spec.split(",") if part.strip()):
        name, _, size = part.partition("=")
        if not name.strip() or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(f"--dims part {part!r} is not name=positive integer")
        dims[name.strip()] = int(size)
    return dims


def run_command(args: argparse.Namespace) -> int:
    inspections = inspect_model(
        args.model, profile=args.profile, placement=args.placement, precision=args.precision, dims=parse_dims(args.dims)
    )
    if args.json:
        print(json.dumps(to_json(args.model, args.profile, inspections, explain=args.explain), indent=1))
    else:
        for inspection in inspections:
            print(format_session(inspection, explain=args.explain))
    return 0


def model_files(model: str) -> list[Path]:
    """The ONNX files of a model name, folder or file."""
    from xdna_ep.errors import ModelError

    path = Path(model)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [path / name for name in SESSION_FILES if (path / name).is_file()]
        if not files:
            raise ModelError(f"{path} holds none of {', '.join(SESSION_FILES)}")
        return files
    if "/" in model or model.endswith(".onnx"):
        raise ModelError(f"model not found: {model}")
    from xdna_ep.models.registry import ensure_model

    folder = Path(ensure_model(model))
    return [folder / name for name in SESSION_FILES]


def inspect_model(
    model: str, *, profile: str = "npu1", placement: str = "auto", precision: str = "bf16", dims: dict[str, int] | None = None
) -> list[SessionInspection]:
    """Run the passes (no binding, nothing registered) on each session file of ``model``.

    ``dims`` (symbolic dimension name -> size) replaces the representative sizes found from structure.
    """
    from xdna_ep.ep.session import load_model
    from xdna_ep.graph_passes.orchestrator import run_passes

    from xdna_ep.graph_passes.shapes import OTHER, representative_shapes, session_role

    inspections = []
    for path in model_files(model):
        proto = load_model(path)
        shapes = representative_shapes(proto, dims) if session_role(proto) != OTHER else None
        proto, report = run_passes(proto, profile=profile, placement=placement, precision=precision, dims=dims)
        by_op = unfused_matrix_flops(proto, shapes) if shapes is not None else {}
        unfused = sum(flops for _, flops in by_op.values())
        inspections.append(SessionInspection(path.stem, report.role, report, unfused, by_op))
    return inspections


def unfused_matrix_flops(model, shapes) -> dict[str, tuple[int, int]]:
    """"domain.op" -> (nodes, FLOPs) of the matrix ops still in the graph, at the representative shapes.

    A node whose shapes are unknown counts as a node with 0 FLOPs (so it still shows in the table).
    """
    found: dict[str, tuple[int, int]] = {}
    for node in model.graph.node:
        flops = matrix_flops(node, shapes)
        if flops is None:
            continue
        key = f"{node.domain or 'ai.onnx'}.{node.op_type}"
        count, total = found.get(key, (0, 0))
        found[key] = (count + 1, total + flops)
    return found


def matrix_flops(node, shapes) -> int | None:
    """Multiply-add FLOPs (2 per MAC) of one matrix op at the table's shapes; None if it is no matrix op."""
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    op = (domain, node.op_type)
    if op not in _MATRIX_OPS:
        return None

    def shape(index: int, outputs: bool = False):
        names = node.output if outputs else node.input
        return shapes.shape(names[index]) if index < len(names) and names[index] else None

    out = shape(0, outputs=True)
    a = shape(0)
    if out is None or a is None:
        return 0
    if op in (("", "MatMul"), ("com.microsoft", "FusedMatMul")):
        return 2 * math.prod(map(int, out)) * a[-1]
    if op == ("", "Gemm"):
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return 2 * math.prod(map(int, out)) * (a[0] if trans_a else a[-1])
    if op == ("", "Conv"):
        w = shape(1)
        return 2 * math.prod(map(int, out)) * math.prod(map(int, w[1:])) if w else 0
    if op == ("com.microsoft", "Attention"):  # x (b, s, in) @ W (in, q + k + v), then attention
        w = shape(1)
        if w is None:
            return 0
        batch, n_q = a[0], a[1]
        present = shape(1, outputs=True)  # (2, b, h, n_kv, d) when there is a past
        n_kv = present[3] if present and len(present) == 5 else n_q
        q_hidden = (w[1] - out[-1]) // 2
        return 2 * batch * n_q * a[-1] * w[1] + 2 * batch * n_q * n_kv * (q_hidden + out[-1])
    # ONNX Attention and contrib MultiHeadAttention: Q, K, V projected already
    present = shape(1, outputs=True)
    k = shape(1)
    if present is not None and len(present) == 4:
        n_kv = present[2]
    elif k is not None:
        n_kv = k[2] if len(k) == 4 else k[1]
    elif len(a) == 5:  # contrib packed QKV (b, s, h, 3, d)
        n_kv = a[1]
    else:
        return 0
    if len(a) == 4 and op == ("", "Attention"):  # (b, h, n_q, d)
        batch, n_q, q_hidden = a[0], a[2], a[1] * a[3]
        v_hidden = out[1] * out[3] if len(out) == 4 else out[-1]
    else:
        batch, n_q = a[0], a[1]
        q_hidden = a[2] * a[4] if len(a) == 5 else a[-1]
        v_hidden = out[-1] if len(out) == 3 else out[1] * out[3]
    return 2 * batch * n_q * n_kv * (q_hidden + v_hidden)


_MATRIX_OPS = {
    ("", "MatMul"), ("", "Gemm"), ("", "Conv"), ("", "Attention"),
    ("com.microsoft", "Attention"), ("com.microsoft", "MultiHeadAttention"), ("com.microsoft", "FusedMatMul"),
}  # fmt: skip



def _short(name: str) -> str:
    return name.rsplit("/xdna_", 1)[0].removeprefix("/model/decoder")


def format_session(inspection: SessionInspection, *, explain: bool = False) -> str:
    report = inspection.report
    lines = [f"== {inspection.session} ({inspection.role}, profile {report.profile})"]
    if report.note:
        lines.append(report.note)
        return "\n".join(lines) + "\n"
    counts = ", ".join(f"{kind} {count}" for kind, count in sorted(report.kinds.items()))
    lines.append(f"fused: {counts or 'nothing'}")
    lines.append(f"shapes at: {report.assumptions or 'static input shapes'}")
    header = f"{'node':44} {'kind':22} {'shape':30} {'GFLOP':>7} {'place':5} {'NPU us':>8} {'CPU us':>8}  reason"
    lines.append(header)
    for p in report.placements:
        npu = f"{p.npu_s * 1e6:8.0f}" if p.npu_s is not None else f"{'-':>8}"
        cpu = f"{p.cpu_s * 1e6:8.0f}" if p.cpu_s is not None else f"{'-':>8}"
        reason = p.reason.split(" at ")[0] if p.placement in ("npu", "cpu") else p.reason
        lines.append(
            f"{_short(p.node)[:44]:44} {p.kind:22} {p.shape:30} {p.flops / 1e9:7.3f} {p.placement:5} {npu} {cpu}  {reason}"
        )
    totals = inspection.totals()
    lines.append(
        f"total: {totals['fused_nodes']} fused nodes, {totals['npu_nodes']} on the NPU; "
        f"{totals['npu_gflops']:.2f} of {totals['fused_gflops']:.2f} fused GFLOP on the NPU "
        f"({100 * totals['npu_share_of_fused_flops']:.1f} %); "
        f"{100 * totals['npu_share_of_matrix_flops']:.1f} % of all matrix GFLOP "
        f"({totals['unfused_matrix_gflops']:.2f} GFLOP left unfused); estimated "
        f"{totals['estimated_s_as_placed'] * 1e3:.1f} ms as placed vs {totals['estimated_s_all_cpu'] * 1e3:.1f} ms all on the CPU"
    )
    if inspection.unfused_by_op:
        left = ", ".join(
            f"{op} {count} ({flops / 1e9:.2f} GFLOP)" for op, (count, flops) in sorted(inspection.unfused_by_op.items())
        )
        lines.append(f"matrix ops left to ONNX Runtime: {left}")
    lines.append(f"GEMM designs: {_gemm_plan(report).reason}")
    if explain:
        lines.append(f"not fused ({len(report.rejections)}):")
        lines.extend(f"  {r.pass_name}: {r.anchor}: {r.reason}" for r in report.rejections)
    return "\n".join(lines) + "\n"


def _gemm_plan(report):
    """One GEMM design per K or one dynamic-K design for the session (``kernels/designs.py``)."""
    from xdna_ep.kernels.designs import plan_session

    return plan_session(report)


def to_json(model: str, profile: str, inspections: list[SessionInspection], *, explain: bool) -> dict:
    sessions = []
    for inspection in inspections:
        report = inspection.report
        entry = {
            "session": inspection.session,
            "role": inspection.role,
            "note": report.note,
            "counts": report.counts,
            "kinds": dict(report.kinds),
            "assumptions": report.assumptions,
            "nodes": [asdict(p) for p in report.placements],
            "totals": inspection.totals(),
            "unfused_matrix_ops": {
                op: {"nodes": count, "gflops": flops / 1e9} for op, (count, flops) in (inspection.unfused_by_op or {}).items()
            },
        }
        if not report.note:
            gemm_plan = _gemm_plan(report)
            entry["gemm_designs"] = {
                "dynamic_k": gemm_plan.dynamic_k,
                "designs": list(gemm_plan.designs),
                "switches_per_pass": gemm_plan.switches,
                "reason": gemm_plan.reason,
            }
        if explain:
            entry["not_fused"] = [asdict(r) for r in report.rejections]
        sessions.append(entry)
    return {"model": model, "profile": profile, "sessions": sessions}
