"""``xdna-ep inspect``: what the graph passes fuse in a Whisper model and where each fused node runs.

    xdna-ep inspect --model base --profile npu1
    xdna-ep inspect --model PATH/encoder_model.onnx --json
    xdna-ep inspect --model tiny.en --explain

Per session, a table of the fused nodes (kind, shape, GFLOPs, placement, estimated NPU and CPU time,
reason) and totals: the share of the FLOPs placed on the NPU, among the fused nodes and among all
matrix work (fused nodes plus MatMul / Conv left unfused, such as the encoder's convolutions).
``--explain`` adds every candidate a pass did not fuse, with the reason.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

SESSION_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


@dataclass(frozen=True)
class SessionInspection:
    """Inspection of one ONNX file."""

    session: str
    role: str
    report: object  # graph_passes.orchestrator.PassReport
    unfused_flops: int  # FLOPs of MatMul / Conv nodes left as plain ONNX (at representative shapes)

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


def run_command(args: argparse.Namespace) -> int:
    inspections = inspect_model(args.model, profile=args.profile, placement=args.placement, precision=args.precision)
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


def inspect_model(model: str, *, profile: str = "npu1", placement: str = "auto", precision: str = "bf16") -> list[SessionInspection]:
    """Run the passes (no binding, nothing registered) on each session file of ``model``."""
    from xdna_ep.ep.session import load_model
    from xdna_ep.graph_passes.orchestrator import run_passes

    from xdna_ep.graph_passes.shapes import OTHER, representative_shapes, session_role

    inspections = []
    for path in model_files(model):
        proto = load_model(path)
        shapes = representative_shapes(proto) if session_role(proto) != OTHER else None
        proto, report = run_passes(proto, profile=profile, placement=placement, precision=precision)
        unfused = _unfused_matrix_flops(proto, shapes) if shapes is not None else 0
        inspections.append(SessionInspection(path.stem, report.role, report, unfused))
    return inspections


def _unfused_matrix_flops(model, shapes) -> int:
    """FLOPs of the MatMul and Conv nodes still in the graph, at the representative shapes."""
    flops = 0
    for node in model.graph.node:
        out = shapes.shape(node.output[0])
        if out is None or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "MatMul":
            a = shapes.shape(node.input[0])
            if a:
                flops += 2 * _product(out) * a[-1]
        elif node.op_type == "Conv":
            w = shapes.shape(node.input[1])
            if w:
                flops += 2 * _product(out) * _product(w[1:])
    return flops


def _product(values) -> int:
    result = 1
    for value in values:
        result *= int(value)
    return result


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
    lines.append(f"shapes at: {report.assumptions}")
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
