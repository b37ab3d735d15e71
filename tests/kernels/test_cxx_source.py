"""The dataflow descriptions against the C++ they run: each core's kernel calls declare the argument
types of the ``extern "C"`` signatures in the kernel's .cc, and each core's local buffers count every
static array the .cc declares under the core's -D flags."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from xdna_ep.kernels.cxx_source import KERNELS_DIR, signatures, static_arrays
from xdna_ep.kernels.dataflow import KernelCall
from xdna_ep.kernels.designs import build_list, describe

TINY = {"tiny": (384, 6)}  # one encoder size: every design kind, both precisions


def designs_of(profile: str):
    return [(design.spec, describe(design.spec, design.shapes[0])) for design in build_list(profile, ("bf16", "accurate"), TINY)]


def source_of(spec):
    return KERNELS_DIR / spec.kind / f"{spec.kind}.cc"


@pytest.mark.parametrize("profile", ["npu1", "npu2"])
def test_every_kernel_call_declares_the_cxx_signature(profile):
    checked = Counter()
    for spec, flow in designs_of(profile):
        declared_in_cxx = signatures(source_of(spec))
        for core in flow.cores:
            for call in core.calls:
                assert call.symbol in declared_in_cxx, (flow.name, call.symbol, sorted(declared_in_cxx))
                assert call.declared == declared_in_cxx[call.symbol], (flow.name, call.symbol)
                checked[spec.kind] += 1
    assert set(checked) == {"matmul", "attention", "softmax"}  # every kind was compared


def test_signature_parser_reads_the_changed_entry_points():
    # the fixed designs' arguments: the epilogue's params object is a bf16 object from the B stream, the
    # attention step takes one key/value object and reads its params from state
    matmul = signatures(KERNELS_DIR / "matmul" / "matmul.cc")
    attention = signatures(KERNELS_DIR / "attention" / "attention.cc")
    assert matmul["xdna_bias_gelu_f32"] == ("bf16[]", "f32[]")
    assert attention["xdna_attention_params"] == ("bf16[]", "f32[]")
    assert attention["xdna_attention_step_bf16"] == attention["xdna_attention_step_accurate"] == ("bf16[]", "bf16[]", "f32[]")


@pytest.mark.parametrize("profile", ["npu1", "npu2"])
def test_core_buffers_count_every_static_array_of_the_cxx(profile):
    for spec, flow in designs_of(profile):
        for core in flow.cores:
            arrays = static_arrays(source_of(spec), core.defines)
            names = {b.name.rsplit("_", 2)[0]: b for b in flow.buffers if b.tile == core.tile}
            for array in arrays:
                assert array.name in names, (flow.name, array.name)
                assert (names[array.name].dtype, names[array.name].elements) == (array.dtype, array.elements)


def test_static_arrays_follow_the_defines_and_the_variant():
    defines = (("HEAD_DIM", 64), ("Q_ROWS", 32), ("KV_TILE", 32), ("MMUL_R", 4), ("MMUL_S", 8), ("MMUL_T", 4))
    source = KERNELS_DIR / "attention" / "attention.cc"
    bf16 = {a.name: a.elements for a in static_arrays(source, defines)}
    accurate = {a.name: a.elements for a in static_arrays(source, (*defines, ("XDNA_ACCURATE", 1)))}
    # q blocks: parts x 2 x HEAD_DIM / s vectors of r x s; v blocks: parts x 2 x KV_TILE / s of s x t
    assert bf16["q_blocks"] == 2 * 64 * 4 and bf16["v_blocks"] == 2 * 32 * 4
    assert accurate["q_blocks"] == 2 * bf16["q_blocks"] and accurate["v_blocks"] == 2 * bf16["v_blocks"]
    assert "probs_lo" not in bf16 and accurate["probs_lo"] == 32 * 32  # the accurate build only
    npu2 = {a.name: a.elements for a in static_arrays(source, (*defines[:3], ("MMUL_R", 8), ("MMUL_S", 8), ("MMUL_T", 8)))}
    assert npu2["q_blocks"] == 2 * 64 * 8  # the profile's mmul shape sizes the gathered blocks


def test_a_new_static_array_is_counted_and_an_unreadable_one_refused(tmp_path):
    source = tmp_path / "kernel.cc"
    source.write_text("#define ROWS 8\nconstexpr unsigned COLS = ROWS * 2;\nstatic float a[ROWS][COLS / 4];\n")
    assert [(a.name, a.dtype, a.elements) for a in static_arrays(source, ())] == [("a", "f32", 32)]
    source.write_text("static double b[4];\n")
    with pytest.raises(ValueError, match="static array of 'double'"):
        static_arrays(source, ())
    source.write_text("static float c[UNKNOWN];\n")
    with pytest.raises(ValueError, match="cannot evaluate 'UNKNOWN'"):
        static_arrays(source, ())


def test_the_verifier_refuses_a_description_that_drifts_from_its_cxx():
    from xdna_ep.kernels.attention.spec import AttentionSpec
    from xdna_ep.kernels.verify import verify

    spec = AttentionSpec(head_dim=64)
    flow = describe(spec, (1, 16 * 32, 64))
    assert verify(flow).ok
    # a description that forgets one static array of attention.cc, and one whose step still takes k, v, params
    dropped = dataclasses.replace(flow, buffers=tuple(b for b in flow.buffers if not b.name.startswith("scores_0_0")))
    violations = verify(dropped).violations
    assert len(violations) == 1 and "kernel_arrays: attention/attention.cc declares static scores (1024 f32)" in violations[0]
    old_step = KernelCall(spec.c_symbol, ("bf16[]",) * 3 + ("f32[]",) * 2, ("bf16[]",) * 3 + ("f32[]",) * 2, "key/value tile")
    core = dataclasses.replace(flow.cores[0], calls=tuple(old_step if c.symbol == spec.c_symbol else c for c in flow.cores[0].calls))
    violations = verify(dataclasses.replace(flow, cores=(core, *flow.cores[1:]))).violations
    assert len(violations) == 1 and f"kernel_types: {spec.c_symbol} is declared (bf16[], bf16[], bf16[], f32[], f32[])" in violations[0]
