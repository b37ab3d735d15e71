"""ONNX's own backend node tests for MatMul, Gemm, Softmax and Attention, run through xdna-ep.

    xdna-ep conformance [--device sim] [--precision accurate] [--profile npu1] [-k PATTERN]

Each test case of ``onnx.backend.test`` (the cases the onnx package generates its node test data from)
is compiled with xdna-ep's passes, placement forced to the NPU, and run in an ONNX Runtime session
with the xdna custom ops on ``device``; its outputs are compared with the case's expected outputs at
the case's own tolerances (ONNX's defaults: rtol 1e-3, atol 1e-7). Two preparations make the cases
look like the models xdna-ep is for, where the matrices multiplied are weights:

- the second operand of a MatMul (and B and C of a Gemm) is fed from the case's data as an initializer;
- a Gemm becomes the MatMul (+ Add) it computes: alpha and transB folded into the constant weight,
  beta into the constant bias, transA as a Transpose of the activation.

A case passes when every output matches and no xdna op fell back to the CPU. The report says, per
op, in how many cases xdna ops executed (counted from the calls the compiled model's ops received, per
xdna op type), and for each case which passes refused what, with the reason: a node the passes cannot
take (a batched or 1-D weight, an fp16 tensor, an Attention with a mask or a past) runs on ONNX
Runtime's CPU kernels and still has to match. For Attention, ONNX Runtime's CPU EP on the untouched
case is run too: the acceptance bar is to pass at least as many as it does, and every case it passes
either runs through xdna::Attention or names the reason it was not fused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np

OPS = ("MatMul", "Gemm", "Softmax", "Attention")
# test-name prefixes of each op's cases (test_matmulinteger is another op)
PREFIXES = {"MatMul": "test_matmul_", "Gemm": "test_gemm_", "Softmax": "test_softmax_", "Attention": "test_attention_"}


@dataclass(frozen=True)
class ConformanceOptions:
    """Which device and numerics the conformance run uses, and which cases."""

    device: str = "sim"  # where the xdna ops run: "sim" or "npu"
    precision: str = "accurate"  # "accurate" (about fp32) or "bf16"
    profile: str = "npu1"
    ops: tuple[str, ...] = OPS
    pattern: str = ""  # only cases whose name contains it

    def __post_init__(self) -> None:
        from xdna_ep.ep.cost_model import check_precision
        from xdna_ep.ep.device import get_profile

        if self.device not in ("sim", "npu"):
            raise ValueError(f"conformance runs on an NPU device, 'sim' or 'npu', not {self.device!r}")
        check_precision(self.precision)
        get_profile(self.profile)
        unknown = sorted(set(self.ops) - set(OPS))
        if unknown:
            raise ValueError(f"unknown op(s) {', '.join(unknown)}: conformance covers {', '.join(OPS)}")


@dataclass
class CaseResult:
    name: str
    op: str
    passed: bool
    xdna_nodes: int = 0  # fused xdna nodes in the compiled case
    detail: str = ""  # why it failed, or what ran it
    ort_cpu_passed: bool | None = None  # ONNX Runtime's CPU EP on the untouched case (Attention only)
    executed: dict[str, int] = field(default_factory=dict)  # xdna op type -> calls it received in this case
    refusals: list[str] = field(default_factory=list)  # why fuse_attention did not take a candidate


@dataclass
class ConformanceReport:
    options: ConformanceOptions
    results: list[CaseResult] = field(default_factory=list)

    def of(self, op: str) -> list[CaseResult]:
        return [r for r in self.results if r.op == op]

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    def acceptable(self) -> bool:
        """Every MatMul, Gemm and Softmax case passes; Attention passes at least as often as ORT's CPU EP."""
        strict = all(r.passed for r in self.results if r.op != "Attention")
        attention = self.of("Attention")
        ours = sum(r.passed for r in attention)
        theirs = sum(bool(r.ort_cpu_passed) for r in attention)
        return strict and ours >= theirs

    def attention_refusals(self) -> list[str]:
        """Cases ONNX Runtime's CPU EP passes that did not run through xdna::Attention, grouped by reason."""
        reasons: dict[str, int] = {}
        for r in self.of("Attention"):
            if r.ort_cpu_passed and not r.executed.get("Attention"):
                reason = r.refusals[0] if r.refusals else "no attention candidate in the graph"
                reasons[reason] = reasons.get(reason, 0) + 1
        return [f"not through xdna::Attention, {count} case(s): {reason}" for reason, count in sorted(reasons.items(), key=lambda item: -item[1])]

    def lines(self) -> list[str]:
        out = []
        for op in self.options.ops:
            results = self.of(op)
            if not results:
                continue
            passed = sum(r.passed for r in results)
            executed = sum(r.passed and sum(r.executed.values()) > 0 for r in results)
            per_op = {
                op_type: sum(r.passed and r.executed.get(op_type, 0) > 0 for r in results)
                for op_type in sorted({t for r in results for t in r.executed})
            }
            by_type = ", ".join(f"xdna::{op_type} in {count}" for op_type, count in per_op.items() if count)
            line = f"{op}: {passed} passed, {len(results) - passed} failed; xdna ops executed in {executed} of the passes"
            line += f" ({by_type})" if by_type else ""
            if op == "Attention":
                line += f"; ONNX Runtime CPU EP: {sum(bool(r.ort_cpu_passed) for r in results)} passed"
                line += "\n" + "\n".join(f"  {line}" for line in self.attention_refusals())
            out.append(line)
            out.extend(f"  FAILED {r.name}: {r.detail}" for r in results if not r.passed)
        out.append(f"{self.passed} passed, {self.failed} failed")
        return out


def collect_cases(options: ConformanceOptions) -> list[tuple[str, object]]:
    """(op, onnx TestCase) for the selected ops, in ONNX's order."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    selected = []
    for case in cases:
        for op in options.ops:
            if case.name.startswith(PREFIXES[op]) and options.pattern in case.name:
                selected.append((op, case))
    return selected


def _initializer(name: str, value: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def prepare_model(model, inputs: list[np.ndarray]):
    """(model, feeds) with MatMul/Gemm weights as initializers and Gemm written as MatMul (+ Add).

    ``inputs`` are the case's input values in graph-input order. The model is copied, not changed.
    """
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    values = {graph_input.name: value for graph_input, value in zip(graph.input, inputs)}
    constants: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type == "MatMul":
            constant_names = node.input[1:2]
        elif node.op_type == "Gemm":
            constant_names = node.input[1:3]
        else:
            continue
        for name in constant_names:
            if name in values:
                constants[name] = values[name]
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Gemm" and node.input[1] in constants:
            new_nodes.extend(_gemm_as_matmul(node, constants))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [graph_input for graph_input in graph.input if graph_input.name not in constants]
    del graph.input[:]
    graph.input.extend(kept)
    used = {name for node in graph.node for name in node.input}
    graph.initializer.extend(_initializer(name, value) for name, value in constants.items() if name in used)
    feeds = {name: value for name, value in values.items() if name not in constants}
    return model, feeds


def _gemm_as_matmul(node, constants: dict[str, np.ndarray]) -> list:
    """Y = alpha * A' @ B' + beta * C as [Transpose] + MatMul + [Add], constants folded."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    b = constants[node.input[1]]
    weight = (b.T if attrs.get("transB", 0) else b) * np.float32(alpha)
    constants[node.input[1]] = np.ascontiguousarray(weight, dtype=b.dtype)
    nodes = []
    a = node.input[0]
    if attrs.get("transA", 0):
        nodes.append(helper.make_node("Transpose", [a], [f"{a}_transposed"], perm=[1, 0], name=f"{node.name}_transA"))
        a = f"{a}_transposed"
    has_bias = len(node.input) > 2 and node.input[2] != ""
    product = f"{node.output[0]}_product" if has_bias else node.output[0]
    nodes.append(helper.make_node("MatMul", [a, node.input[1]], [product], name=f"{node.name}_matmul"))
    if has_bias:
        c = np.asarray(constants[node.input[2]], dtype=weight.dtype) * weight.dtype.type(beta)
        n = weight.shape[1]
        if c.size in (1, n) and (c.ndim <= 1 or c.shape[0] == 1):
            c = np.ascontiguousarray(np.broadcast_to(c.reshape(-1), (n,)))  # a bias row: (N,)
        constants[node.input[2]] = c
        nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
    return nodes


def _compare(outputs: list[np.ndarray], expected: list[np.ndarray], rtol: float, atol: float) -> str:
    """'' when every output matches, else the first mismatch."""
    for index, (got, want) in enumerate(zip(outputs, expected)):
        want = np.asarray(want)
        if got.shape != want.shape:
            return f"output {index}: shape {got.shape}, expected {want.shape}"
        try:
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError as error:
            summary = [line.strip() for line in str(error).splitlines() if line.strip().startswith("Max")]
            return f"output {index} differs (rtol={rtol}, atol={atol}): {'; '.join(summary)}"
    return ""


def _run_ort_cpu(case) -> bool:
    """Does ONNX Runtime's CPU EP pass the untouched case?"""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        for inputs, expected in case.data_sets:
            feeds = {i.name: v for i, v in zip(session.get_inputs(), inputs)}
            if _compare(session.run(None, feeds), expected, case.rtol, case.atol):
                return False
        return True
    except Exception:  # noqa: BLE001 - any ORT failure is a failed case
        return False


def run_case(op: str, case, options: ConformanceOptions) -> CaseResult:
    """Compile one case with xdna-ep (placement forced to the NPU), run it on ``options.device``, compare."""
    import onnxruntime as ort

    from xdna_ep.ep import ops as xdna_op_library
    from xdna_ep.ep import registry
    from xdna_ep.ep import session as xdna_session
    from xdna_ep.graph_passes import xdna_ops

    result = CaseResult(name=case.name, op=op, passed=False)
    if op == "Attention":
        result.ort_cpu_passed = _run_ort_cpu(case)
    try:
        for inputs, expected in case.data_sets:
            model, feeds = prepare_model(case.model, inputs)
            compiled = xdna_session.compile(
                model, profile=options.profile, placement="npu", precision=options.precision,
                device=options.device, any_model=True,
            )  # fmt: skip
            result.xdna_nodes = sum(xdna_ops.is_xdna(node) for node in compiled.graph.node)
            bound = registry.lookup(xdna_session.model_key(compiled))
            result.refusals = [r.reason for r in bound.report.rejections if r.pass_name == "fuse_attention"]
            session_options = xdna_session.session_options(options.device)
            session = ort.InferenceSession(compiled.SerializeToString(), session_options, providers=["CPUExecutionProvider"])
            with xdna_op_library.collect_fallbacks() as fallback_list:
                outputs = session.run(None, feeds)
            for op_type, stats in bound.op_stats.items():
                if stats.calls:
                    result.executed[op_type] = result.executed.get(op_type, 0) + stats.calls
            del session
            xdna_session.release(compiled)
            fallbacks = len(fallback_list)
            if fallbacks:
                result.detail = f"{fallbacks} xdna op call(s) fell back to the CPU"
                return result
            mismatch = _compare(outputs, expected, case.rtol, case.atol)
            if mismatch:
                result.detail = mismatch
                return result
    except Exception as error:  # noqa: BLE001 - a case that cannot load or run is a failed case, with its cause
        result.detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return result
    result.passed = True
    executed = ", ".join(f"xdna::{op_type} x{calls}" for op_type, calls in sorted(result.executed.items()))
    refused = f"; not fused: {result.refusals[0]}" if result.refusals else ""
    result.detail = (f"executed {executed}" if executed else "no xdna op executed: ONNX Runtime's CPU kernels") + refused
    return result


def run_conformance(options: ConformanceOptions = ConformanceOptions()) -> ConformanceReport:
    """Run every selected case; returns the report."""
    report = ConformanceReport(options=options)
    for op, case in collect_cases(options):
        report.results.append(run_case(op, case, options))
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = ConformanceOptions()
    parser.add_argument("--device", choices=("sim", "npu"), default=defaults.device, help="where the xdna ops run")
    parser.add_argument("--precision", choices=("accurate", "bf16"), default=defaults.precision)
    parser.add_argument("--profile", choices=("npu1", "npu2"), default=defaults.profile)
    parser.add_argument("--op", action="append", choices=OPS, help="only these ops (repeatable; default all)")
    parser.add_argument("-k", dest="pattern", default="", help="only cases whose name contains this")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")


def run_command(args: argparse.Namespace) -> int:
    options = ConformanceOptions(
        device=args.device, precision=args.precision, profile=args.profile,
        ops=tuple(args.op) if args.op else OPS, pattern=args.pattern,
    )  # fmt: skip
    report = run_conformance(options)
    if args.verbose:
        for r in report.results:
            print(f"{'PASS' if r.passed else 'FAIL'} {r.name}: {r.detail}")
    print("\n".join(report.lines()))
    return 0 if report.acceptable() else 1
