"""The simulated NPU enforces what the device and XRT enforce, through pyxrt's own API.

Each test drives the simulated pyxrt module the way mlir-aie's host code drives the real one
(device, xclbin, register_xclbin, hw_context, kernel, bo, sync, kernel(3, insts, n, ...), wait) and
breaks one rule; the error must name the problem.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xdna_ep.ep import simulated_pyxrt as xrt
from xdna_ep.ep.device import NPU1
from xdna_ep.ep.xrt_backend import check
from xdna_ep.errors import DeviceError
from xdna_ep.kernels import artifacts
from xdna_ep.kernels.matmul import reference
from xdna_ep.kernels.matmul.design import pack_weight
from xdna_ep.kernels.matmul.spec import MatmulSpec

M, K, N = 256, 64, 128  # the smallest legal npu1 GEMM bucket


@pytest.fixture(autouse=True)
def machine():
    """Each test gets a simulated machine of its own (contexts of other tests do not count)."""
    with xrt.separate_machine("npu1") as npu:
        yield npu


def _xclbin_file(spec) -> str:
    return str(artifacts.write_sim_artifacts(artifacts.sim_kernel_dir(), spec.xclbin_name, spec.sim_manifest()))


def weight(w: np.ndarray, k: int, spec: MatmulSpec) -> np.ndarray:
    """The b buffer of W (k, N): tile-major bf16 with a no-bias, no-activation params object per block."""
    tiled = reference.prepare_weight(w, k, N, spec.tile[2], "bf16")
    return pack_weight(tiled, reference.prepare_params(None, "", N, spec.tile[2]), k, N, spec)


# the design-level simulator accumulates each K tile's products in fp32 and adds the tiles in order;
# the oracle multiplies all of K at once: measured max |difference| 3.8e-6 (K = 64) and 7.6e-6 (K = 128)
# at |C| <= 52
ACCUMULATION_ATOL = 1.5e-5


class Gemm:
    """A hand-driven GEMM launch on the simulated pyxrt, every step explicit."""

    def __init__(self, spec: MatmulSpec | None = None, k: int = K) -> None:
        self.spec = spec or MatmulSpec(k=k)
        self.device = xrt.device(0)
        self.xclbin = xrt.xclbin(_xclbin_file(self.spec))
        uuid = self.device.register_xclbin(self.xclbin)
        self.context = xrt.hw_context(self.device, uuid)
        self.kernel = xrt.kernel(self.context, "MLIR_AIE")
        words = self.spec.instruction_words(M, k, N)
        self.insts = xrt.bo(self.device, words.nbytes, xrt.bo.cacheable, self.kernel.group_id(1))
        self.insts.write(words, 0)
        self.insts.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
        self.n_insts = int(words.size)
        sizes = self.spec.arg_bytes(M, k, N)
        self.bos = {
            name: xrt.bo(self.device, sizes[name], xrt.bo.host_only, self.kernel.group_id(3 + i))
            for i, name in enumerate(("a", "b", "c"))
        }
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((M, k)).astype(np.float32)
        self.w = rng.standard_normal((k, N)).astype(np.float32)
        self.write("a", reference.prepare_activations(self.x, k, "bf16"))
        self.write("b", weight(self.w, k, self.spec))

    def write(self, name: str, array: np.ndarray, sync: bool = True) -> None:
        """Write ``array``'s bytes at the start of buffer ``name`` (and sync it to the device)."""
        self.bos[name].write(np.ascontiguousarray(array).view(np.uint8).reshape(-1), 0)
        if sync:
            self.bos[name].sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)

    def launch(self, *data):
        data = data or tuple(self.bos[name] for name in ("a", "b", "c"))
        return self.kernel(3, self.insts, self.n_insts, *data)

    def result(self) -> np.ndarray:
        c = self.bos["c"]
        c.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE)
        return c.read(c.size(), 0).view(np.float32).reshape(M, N)


def test_a_correct_launch_computes_the_reference():
    gemm = Gemm()
    run = gemm.launch()
    assert run.wait() == xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
    expected = reference.matmul_reference(gemm.x, gemm.w)
    np.testing.assert_allclose(gemm.result(), expected, rtol=0, atol=ACCUMULATION_ATOL)


def test_forgotten_sync_to_device_is_an_error():
    gemm = Gemm()
    gemm.write("a", reference.prepare_activations(gemm.x * 2, K, "bf16"), sync=False)
    with pytest.raises(RuntimeError, match=r"input 'a'.*changed on the host.*missing bo.sync\(XCL_BO_SYNC_BO_TO_DEVICE\)"):
        gemm.launch()


def test_change_through_mapped_memory_without_sync_is_an_error():
    gemm = Gemm()
    np.frombuffer(gemm.bos["b"].map(), dtype=np.uint8)[:2] ^= 0xFF
    with pytest.raises(RuntimeError, match=r"input 'b'.*changed on the host"):
        gemm.launch()


def test_output_read_before_sync_from_device_is_an_error_and_the_mapped_copy_is_poisoned():
    gemm = Gemm()
    gemm.launch().wait()
    c = gemm.bos["c"]
    with pytest.raises(RuntimeError, match=r"not synced from the device"):
        c.read(16, 0)
    assert np.isnan(np.frombuffer(c.map(), dtype=np.float32)[:4]).all()
    assert np.isfinite(gemm.result()).all()


def test_wrong_group_id_is_an_error():
    gemm = Gemm()
    misplaced = xrt.bo(gemm.device, gemm.bos["a"].size(), xrt.bo.host_only, gemm.kernel.group_id(4))
    misplaced.write(gemm.bos["a"].map(), 0)
    misplaced.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
    with pytest.raises(RuntimeError, match=r"argument 3 \(a\) is a bo on group id 4, the kernel declares group id 3"):
        gemm.launch(misplaced, gemm.bos["b"], gemm.bos["c"])


def test_too_small_buffer_is_an_error():
    gemm = Gemm()
    small = xrt.bo(gemm.device, M * N * 4 - 4, xrt.bo.host_only, gemm.kernel.group_id(5))
    with pytest.raises(RuntimeError, match=r"buffer 'c' \(argument 5\) has 131068 bytes, the shape .* needs 131072"):
        gemm.launch(gemm.bos["a"], gemm.bos["b"], small)


def test_more_buffers_than_declared_is_an_error_not_a_crash():
    gemm = Gemm()
    with pytest.raises(RuntimeError, match=r"more buffers than the kernel declares crashes XRT"):
        gemm.launch(*gemm.bos.values(), gemm.bos["c"])


def test_unknown_kernel_name_is_an_error():
    gemm = Gemm()
    with pytest.raises(RuntimeError, match=r"no kernel named 'MLIR_AIE_GEMM'.*it has: MLIR_AIE"):
        xrt.kernel(gemm.context, "MLIR_AIE_GEMM")


def test_missing_xclbin_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"No such file or directory"):
        xrt.xclbin(str(tmp_path / "xdna_matmul_k64_npu1.xclbin"))


def test_a_real_or_foreign_xclbin_is_refused(tmp_path):
    binary = tmp_path / "real.xclbin"
    binary.write_bytes(b"xclbin2\x00\xff\xfe" * 8)
    with pytest.raises(RuntimeError, match=r"binary \(real\) xclbin"):
        xrt.xclbin(str(binary))
    foreign = tmp_path / "foreign.xclbin"
    foreign.write_text('{"format": "something else"}')
    with pytest.raises(RuntimeError, match=r"not a simulated xclbin"):
        xrt.xclbin(str(foreign))


def test_load_xclbin_is_not_supported_on_the_npu():
    with pytest.raises(RuntimeError, match=r"Operation not supported"):
        xrt.device(0).load_xclbin("any.xclbin")


def test_unsynced_instruction_stream_is_an_error():
    gemm = Gemm()
    gemm.insts.write(gemm.spec.instruction_words(2 * M, K, N), 0)
    with pytest.raises(RuntimeError, match=r"instruction buffer was written on the host but not synced"):
        gemm.launch()


def test_missing_instruction_stream_is_an_error():
    gemm = Gemm()
    empty = xrt.bo(gemm.device, 64, xrt.bo.cacheable, gemm.kernel.group_id(1))
    empty.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
    with pytest.raises(RuntimeError, match=r"missing or invalid instruction stream: not a simulated instruction stream"):
        gemm.kernel(3, empty, 16, *gemm.bos.values())
    with pytest.raises(RuntimeError, match=r"instruction count 0"):
        gemm.kernel(3, gemm.insts, 0, *gemm.bos.values())


def test_instruction_stream_for_another_k_is_an_error():
    gemm = Gemm()
    other = MatmulSpec(k=2 * K).instruction_words(M, 2 * K, N)
    gemm.insts.write(other, 0)
    gemm.insts.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
    with pytest.raises(RuntimeError, match=r"K=128 on xdna_matmul_k64_npu1, built for K=64 .*silently gives wrong results"):
        gemm.launch()


def test_dynamic_k_design_runs_any_k_that_is_a_multiple_of_its_k_tile(machine):
    from xdna_ep.ep import cost_model

    gemm = Gemm(MatmulSpec(k=None), k=2 * K)
    assert gemm.launch().wait() == xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
    np.testing.assert_allclose(gemm.result(), reference.matmul_reference(gemm.x, gemm.w), rtol=0, atol=ACCUMULATION_ATOL)
    # the same xclbin, context and buffers, now K = 64: only the instruction stream and the operands change
    x, w = gemm.x[:, :K], gemm.w[:K]
    gemm.insts.write(gemm.spec.instruction_words(M, K, N), 0)
    gemm.insts.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
    gemm.write("a", reference.prepare_activations(x, K, "bf16"))
    gemm.write("b", weight(w, K, gemm.spec))
    assert gemm.launch().wait() == xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
    np.testing.assert_allclose(gemm.result(), reference.matmul_reference(x, w), rtol=0, atol=ACCUMULATION_ATOL)
    ledger = machine.ledger
    assert ledger.contexts_created == 1 and ledger.design_switches == 1
    assert [record.shape for record in ledger.records] == [(M, 2 * K, N), (M, K, N)]
    dynamic = NPU1.launch_s + cost_model.gemm_compute_s(NPU1, M, K, N, dynamic_k=True)  # no switch: same design
    assert ledger.records[1].modelled_s == pytest.approx(dynamic, rel=1e-12)
    assert dynamic - NPU1.launch_s - cost_model.gemm_compute_s(NPU1, M, K, N) == pytest.approx(NPU1.runtime_parameters_s)


def test_dynamic_k_design_refuses_a_k_that_is_not_a_multiple_of_its_k_tile():
    gemm = Gemm(MatmulSpec(k=None), k=2 * K)
    gemm.insts.write(artifacts.sim_instruction_words("matmul", (M, K + 32, N)), 0)
    gemm.insts.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
    with pytest.raises(RuntimeError, match=r"xdna_matmul_kdyn_npu1: K=96 must be a positive multiple of the per-core k 64"):
        gemm.launch()


def test_wrong_opcode_is_an_error():
    gemm = Gemm()
    with pytest.raises(RuntimeError, match=r"opcode 2, an NPU launch uses 3"):
        gemm.kernel(2, gemm.insts, gemm.n_insts, *gemm.bos.values())


def test_seventh_hardware_context_on_npu1_is_an_error(machine):
    device = xrt.device(0)
    contexts = []
    for i in range(1, 7):
        image = xrt.xclbin(_xclbin_file(MatmulSpec(k=64 * i)))
        contexts.append(xrt.hw_context(device, device.register_xclbin(image)))
    assert len(machine.live_contexts) == 6
    image = xrt.xclbin(_xclbin_file(MatmulSpec(k=64 * 7)))
    uuid = device.register_xclbin(image)
    with pytest.raises(RuntimeError, match=r"no hardware context left: npu1 has 6 system-wide"):
        xrt.hw_context(device, uuid)
    contexts.pop()  # a closed context frees its slot
    assert len(machine.live_contexts) == 5
    contexts.append(xrt.hw_context(device, uuid))


def test_xclbin_of_another_npu_is_refused():
    with xrt.separate_machine("npu2"):
        device = xrt.device(0)
        image = xrt.xclbin(_xclbin_file(MatmulSpec(k=64, profile="npu1")))
        with pytest.raises(RuntimeError, match=r"built for npu1, this \(simulated\) NPU is npu2"):
            device.register_xclbin(image)


def test_launch_past_the_driver_timeout_ends_in_timeout_and_check_decodes_it():
    impatient = dataclasses.replace(NPU1, driver_timeout_s=1e-6)
    with xrt.separate_machine(impatient):
        gemm = Gemm()
        gemm.bos["c"].write(np.zeros(M * N, np.float32).view(np.uint8), 0)
        gemm.bos["c"].sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
        state = gemm.launch().wait()
        assert state == xrt.ert_cmd_state.ERT_CMD_STATE_TIMEOUT
        with pytest.raises(DeviceError, match=r"ERT_CMD_STATE_TIMEOUT: the driver killed the job after 2 s"):
            check(xrt, state, "gemm")
        assert not gemm.result().any()  # the output was never written


def test_ledger_counts_launches_bytes_switches_and_models_time_with_the_cost_model(machine):
    from xdna_ep.ep import cost_model

    gemm = Gemm()
    before = machine.reset_ledger()
    assert before.launches == 0 and before.contexts_created == 1
    gemm.launch().wait()
    gemm.launch().wait()
    gemm.result()
    ledger = machine.ledger
    assert ledger.launches == 2
    assert ledger.design_switches == 1  # the first launch configures the array with the design
    assert ledger.bytes_from_device == M * N * 4
    compute = cost_model.gemm_compute_s(NPU1, M, K, N)
    expected = 2 * (NPU1.launch_s + compute) + NPU1.design_switch_s + cost_model.transfer_s(NPU1, M * N * 4)
    assert ledger.modelled_s == pytest.approx(expected, rel=1e-12)
    assert [record.shape for record in ledger.records] == [(M, K, N), (M, K, N)]


def test_runlist_runs_every_added_run():
    gemm = Gemm()
    runs = xrt.runlist(gemm.context)
    for _ in range(3):
        run = xrt.run(gemm.kernel)
        for i, value in enumerate((3, gemm.insts, gemm.n_insts, *gemm.bos.values())):
            run.set_arg(i, value)
        runs.add(run)
    launches_before = xrt.simulated_npu().ledger.launches
    runs.execute()
    runs.wait()
    assert xrt.simulated_npu().ledger.launches == launches_before + 3
    np.testing.assert_allclose(gemm.result(), reference.matmul_reference(gemm.x, gemm.w), rtol=0, atol=ACCUMULATION_ATOL)


def test_a_launch_is_timed_by_the_walk_over_the_description_it_executes(machine):
    from xdna_ep.kernels.designs import describe
    from xdna_ep.kernels.matmul import cycles
    from xdna_ep.kernels.timing import flow_time

    gemm = Gemm()
    tiled = reference.prepare_weight(gemm.w, K, N, gemm.spec.tile[2], "bf16")
    gemm.write("b", pack_weight(tiled, reference.prepare_params(None, "gelu", N, gemm.spec.tile[2]), K, N, gemm.spec))
    machine.reset_ledger()
    gemm.launch().wait()
    flow = describe(gemm.spec, (M, K, N))
    walked = flow_time(flow, cycles.call_cycles(NPU1, gemm.spec, gelu=True), NPU1).seconds  # the params ask for GELU
    record = machine.ledger.records[0]
    assert record.modelled_s == pytest.approx(NPU1.launch_s + NPU1.design_switch_s + walked, rel=1e-12)
    plain = flow_time(flow, cycles.call_cycles(NPU1, gemm.spec), NPU1).seconds
    assert walked > plain  # the GELU epilogue is charged only when the params objects ask for it
