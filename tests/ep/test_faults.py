"""Device faults injected into the simulated NPU (``ep/faults.py``): every op recomputes on the CPU, the
output stays correct, the fallback is counted with its cause and warned once per cause; a timeout is
detected from the run state, never passed on as the zeros the driver leaves; strict sessions raise
naming the node and the cause; the process survives every fault (run in a subprocess); one model
serves many threads at once with the device used by one of them at a time."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import onnx
import pytest
from conftest import AUDIO_DIR, ROOT
from onnx import TensorProto, helper, numpy_helper
from test_simulated_pyxrt import Gemm

import xdna_ep
from xdna_ep.ep import faults, ops
from xdna_ep.ep import simulated_pyxrt as xrt
from xdna_ep.ep.executor import ReferenceExecutor
from xdna_ep.ep.xrt_backend import check
from xdna_ep.errors import DeviceError, FallbackError
from xdna_ep.graph_passes import xdna_ops

ROWS, K, N = 64, 128, 256

# fault -> the causes its fallbacks are counted under (the device's cause: a run state or the pyxrt
# step that failed; a lost device fails at whichever step touches it first)
CAUSES = {
    "launch_error": ("DeviceError: ERT_CMD_STATE_ERROR",),
    "timeout": ("DeviceError: ERT_CMD_STATE_TIMEOUT",),
    "no_context": ("DeviceError: hw_context",),
    "device_lost": ("DeviceError: bo.sync", "DeviceError: register_xclbin"),
    "missing_xclbin": ("DeviceError: xclbin",),
}
# faults that fire only where a design is opened: the test closes the open ones first
OPENING_FAULTS = {"no_context", "missing_xclbin"}


def encoder_shaped_model() -> onnx.ModelProto:
    """softmax(x @ W + b) with the I/O names of a Whisper encoder, rewritten by the passes (any_model: it
    has no convolution front end) into one xdna::MatMul (+bias) and one xdna::Softmax, both placed on
    the NPU by the test."""
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input_features", "W"], ["h"], name="proj"),
            helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
            helper.make_node("Softmax", ["hb"], ["last_hidden_state"], axis=-1, name="softmax"),
        ],
        "encoder_shaped",
        [helper.make_tensor_value_info("input_features", TensorProto.FLOAT, [1, ROWS, K])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, ROWS, N])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def fp32_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    h = x @ weights["W"] + weights["b"]
    e = np.exp(h - h.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, ROWS, K)).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return encoder_shaped_model()


@pytest.fixture(scope="module")
def session(model):
    session = xdna_ep.InferenceSession(model, device="sim", placement="npu", any_model=True)
    assert sorted(p.placement for p in session.report.placements) == ["npu", "npu"]
    return session


def close_designs(session) -> None:
    """Close the open designs of the session's device, as a driver reset does: the next call opens them again."""
    device = session.compiled.executor().device
    with device.lock:
        device.designs.clear()
        device.loaded_design = None


def fallbacks_of(kind: str) -> int:
    """Op calls of this process recomputed on the CPU under one of the causes of fault ``kind``."""
    return sum(count for (_, cause), count in ops.fallback_counts().items() if cause in CAUSES[kind])


def test_a_fault_is_validated():
    with pytest.raises(ValueError, match="unknown fault 'melted'.*launch_error, timeout, no_context, device_lost, missing_xclbin"):
        with faults.inject("melted"):
            pass
    with pytest.raises(ValueError, match="after=-1"):
        with faults.inject("timeout", after=-1):
            pass


def test_a_fault_from_the_environment_lasts_for_the_process(monkeypatch):
    monkeypatch.setattr(faults, "_active", [])
    monkeypatch.setenv(faults.FAULT_ENV, "launch_error:2:1")
    faults._inject_from_environment()
    assert [faults.trip("launch") for _ in range(4)] == [None, None, "launch_error", None]
    monkeypatch.setenv(faults.FAULT_ENV, "timeout:soon")
    with pytest.raises(DeviceError, match=r"XDNA_EP_SIM_FAULT='timeout:soon' is not KIND\[:AFTER\[:TIMES\]\]"):
        faults._inject_from_environment()


# corrupt_result completes with wrong numbers: only the start-up self-check can see it (test below)
CRASHING_FAULTS = [kind for kind in faults.FAULTS if kind != "corrupt_result"]


@pytest.mark.parametrize("kind", CRASHING_FAULTS)
def test_each_fault_recomputes_on_the_cpu_counted_and_warned_once_per_cause(kind, session, model, caplog, monkeypatch):
    monkeypatch.setattr(ops, "_warned", set())
    x = inputs(1)
    expected = fp32_reference(model, x)
    np.testing.assert_allclose(session.run(None, {"input_features": x})[0], expected, rtol=2e-2, atol=1e-3)  # bf16 on the device
    if kind in OPENING_FAULTS:
        close_designs(session)
    before = fallbacks_of(kind)
    with caplog.at_level(logging.WARNING, logger="xdna_ep.ep.ops"), faults.inject(kind) as fault:
        outputs = [session.run(None, {"input_features": x})[0] for _ in range(3)]
    assert fault.fired >= 3
    for output in outputs:  # the CPU's fp32 result, not the zeros or garbage the device left
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    assert fallbacks_of(kind) - before == 6  # 2 ops x 3 runs
    warnings = [r.getMessage() for r in caplog.records if "fell back to the CPU" in r.getMessage()]
    assert len(warnings) == 2, warnings  # once per (op, cause): MatMul and Softmax
    assert all("injected fault" in w or "ERT_CMD_STATE" in w for w in warnings)
    # the fault is gone: the device computes again
    launches = xrt.simulated_npu().ledger.launches
    np.testing.assert_allclose(session.run(None, {"input_features": x})[0], expected, rtol=2e-2, atol=1e-3)
    assert xrt.simulated_npu().ledger.launches == launches + 2


def test_a_design_corrupted_at_start_up_is_disabled_its_nodes_fall_back_and_strict_fails(model, caplog):
    """A design whose first launch computes wrong numbers (what a wrong stride does on silicon) is caught
    by the start-up self-check: disabled, its nodes recomputed on the CPU under a cause naming it."""
    strict = xdna_ep.InferenceSession(model, device="sim", placement="npu", any_model=True, strict=True)
    device = strict.compiled.executor().device
    close_designs(strict)
    checked = dict(device.self_checks)
    device.self_checks.clear()  # as in a new process: no design opened or checked yet
    try:
        x = inputs(7)
        before = ops.fallback_counts()
        with faults.inject("corrupt_result", times=1):  # the first launch: the GEMM design's self-check
            with pytest.raises(FallbackError, match=r"self-check failed: xdna_matmul_k128_npu1"):
                strict.run(None, {"input_features": x})
        after = ops.fallback_counts()
        cause = "DeviceError: self-check failed: xdna_matmul_k128_npu1"
        assert sum(n for (_, c), n in after.items() if c == cause) - sum(n for (_, c), n in before.items() if c == cause) == 1
        assert "NPU design xdna_matmul_k128_npu1 disabled" in caplog.text
        lenient = xdna_ep.InferenceSession(model, device="sim", placement="npu", any_model=True)
        np.testing.assert_allclose(lenient.run(None, {"input_features": x})[0], fp32_reference(model, x), rtol=1e-5, atol=1e-6)
    finally:
        device.self_checks.clear()
        device.self_checks.update(checked)  # the process's verdicts of the other tests, re-enabling the design


def test_a_fault_on_one_launch_costs_one_fallback(session, model):
    x = inputs(2)
    before = fallbacks_of("timeout")
    with faults.inject("timeout", after=1, times=1) as fault:  # the second launch: the softmax
        output = session.run(None, {"input_features": x})[0]
    assert fault.fired == 1 and fault.chances == 2
    assert fallbacks_of("timeout") - before == 1
    np.testing.assert_allclose(output, fp32_reference(model, x), rtol=2e-2, atol=1e-3)


def test_a_timed_out_run_leaves_zeros_and_the_backend_reports_the_state():
    """What the driver does (the output holds zeros) and what the backend makes of it (a DeviceError
    naming the state): nothing but the run state tells the zeros from a result."""
    with xrt.separate_machine("npu1"):
        gemm = Gemm()
        with faults.inject("timeout"):
            run = gemm.launch()
        state = run.wait()
        assert state == xrt.ert_cmd_state.ERT_CMD_STATE_TIMEOUT
        assert not gemm.result().any()  # zeros, synced back like a result
        with pytest.raises(DeviceError, match="ERT_CMD_STATE_TIMEOUT.*2 s") as raised:
            check(xrt, state, "gemm")
        assert raised.value.cause == "ERT_CMD_STATE_TIMEOUT"


def test_strict_session_names_the_node_and_the_cause(model):
    strict = xdna_ep.InferenceSession(model, device="sim", placement="npu", any_model=True, strict=True)
    x = inputs(4)
    np.testing.assert_allclose(strict.run(None, {"input_features": x})[0], fp32_reference(model, x), rtol=2e-2, atol=1e-3)
    with faults.inject("launch_error"), pytest.raises(FallbackError) as raised:
        strict.run(None, {"input_features": x})
    message = str(raised.value)
    assert "proj/xdna_matmul" in message and "ERT_CMD_STATE_ERROR" in message
    assert "2 NPU op call(s)" in message


class CtrlC(ReferenceExecutor):
    """Its matmul is where a Ctrl-C lands."""

    name = "ctrl-c"

    def matmul(self, node, x, weight_key, bias_key, activation):
        raise KeyboardInterrupt


def test_ctrl_c_inside_an_op_interrupts_the_run_after_it_instead_of_counting_a_fallback(model):
    session = xdna_ep.InferenceSession(model, device="sim", placement="npu", any_model=True)
    session.compiled.use_executor(CtrlC())
    before = sum(ops.fallback_counts().values())
    with pytest.raises(KeyboardInterrupt):
        session.run(None, {"input_features": inputs(6)})
    assert sum(ops.fallback_counts().values()) == before
    session.compiled.use_executor(ReferenceExecutor())
    np.testing.assert_allclose(session.run(None, {"input_features": inputs(6)})[0], fp32_reference(model, inputs(6)), rtol=1e-5, atol=1e-6)


class FailsOnBadThreads(ReferenceExecutor):
    """Computes like the reference, but fails every call made on a thread whose name starts with 'bad'."""

    name = "fails-on-bad-threads"

    def matmul(self, node, x, weight_key, bias_key, activation):
        if threading.current_thread().name.startswith("bad"):
            raise DeviceError("injected per-thread failure", cause="per-thread")
        return super().matmul(node, x, weight_key, bias_key, activation)


def run_threads(targets: dict[str, callable], timeout_s: float = 120.0) -> None:
    threads = [threading.Thread(target=target, name=name) for name, target in targets.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"threads still running after {timeout_s} s (deadlock?): {stuck}"


def test_a_strict_run_sees_only_its_own_fallbacks_when_threads_share_a_session(model):
    strict = xdna_ep.InferenceSession(model, device="sim", placement="npu", any_model=True, strict=True)
    strict.compiled.use_executor(FailsOnBadThreads())
    x = inputs(5)
    outcomes: dict[str, list[str]] = {}

    def worker() -> None:
        name = threading.current_thread().name
        for _ in range(10):
            try:
                strict.run(None, {"input_features": x})
                outcomes.setdefault(name, []).append("ok")
            except FallbackError as error:
                outcomes.setdefault(name, []).append("fallback" if "per-thread" in str(error) else str(error))

    run_threads({f"{kind}-{i}": worker for kind in ("good", "bad") for i in range(4)})
    for name, results in outcomes.items():
        assert results == (["ok"] * 10 if name.startswith("good") else ["fallback"] * 10), (name, results)
    assert len(outcomes) == 8


def test_eight_threads_share_one_session_with_the_device_used_by_one_at_a_time(session, monkeypatch):
    feeds = [inputs(10 + i) for i in range(8)]
    sequential = [session.run(None, {"input_features": x})[0] for x in feeds]
    in_flight, most = [0], [0]
    launch = xrt.kernel._launch
    counter_lock = threading.Lock()

    def watched_launch(self, args):
        with counter_lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.001)  # widen the window in which a second launch could overlap
            return launch(self, args)
        finally:
            with counter_lock:
                in_flight[0] -= 1

    monkeypatch.setattr(xrt.kernel, "_launch", watched_launch)
    results: dict[int, list[np.ndarray]] = {}

    def worker(index: int) -> None:
        results[index] = [session.run(None, {"input_features": feeds[index]})[0] for _ in range(5)]

    run_threads({f"thread-{i}": (lambda i=i: worker(i)) for i in range(8)})
    assert most[0] == 1  # launches never overlapped
    for index, outputs in results.items():
        for output in outputs:
            np.testing.assert_array_equal(output, sequential[index])
    assert len(results) == 8


# --- the process survives: a fault inside an op would kill the interpreter, so run them in a child ----

SURVIVAL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path[:0] = [{tests!r}, {tests_ep!r}]
    from test_faults import CRASHING_FAULTS, encoder_shaped_model, fp32_reference, inputs, close_designs
    import xdna_ep
    from xdna_ep.cli import main
    from xdna_ep.ep import faults
    from xdna_ep.errors import FallbackError

    model = encoder_shaped_model()
    lenient = xdna_ep.InferenceSession(model, device="sim", placement="npu", any_model=True)
    strict = xdna_ep.InferenceSession(model, device="sim", placement="npu", any_model=True, strict=True)
    x = inputs(1)
    expected = fp32_reference(model, x)
    for kind in CRASHING_FAULTS:
        close_designs(lenient)
        with faults.inject(kind):
            y = lenient.run(None, {{"input_features": x}})[0]
            np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
            try:
                strict.run(None, {{"input_features": x}})
                print(kind, "strict did not raise")
            except FallbackError as error:
                print(kind, "survived", "proj/xdna_matmul" in str(error), flush=True)
    with faults.inject("timeout"):
        sys.exit(main(["transcribe", "--device", "sim", "--strict", {clip!r}]))
    """
)


def test_the_process_survives_every_fault_and_strict_transcribe_exits_with_an_error():
    tests = ROOT / "tests"
    script = SURVIVAL_SCRIPT.format(tests=str(tests), tests_ep=str(tests / "ep"), clip=str(AUDIO_DIR / "jfk.wav"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    lines = result.stdout.splitlines()
    assert lines == [f"{kind} survived True" for kind in CRASHING_FAULTS], result.stdout + result.stderr
    assert result.returncode == 2, result.stderr  # the CLI's error exit, not a crash (negative: a signal)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "strict" in errors[0] and "ERT_CMD_STATE_TIMEOUT" in errors[0], result.stderr
    assert "xdna_matmul" in errors[0] or "xdna_attention" in errors[0]  # names the node


# --- a real clip through tiny.en on the simulated NPU, with and without faults ---------------------


@pytest.fixture(scope="module")
def tiny_sim():
    from real_sessions import model_folder

    model_folder("tiny.en")
    model = xdna_ep.load_model("tiny.en", device="sim")
    baseline = xdna_ep.transcribe(AUDIO_DIR / "jfk.wav", model, temperature=0, beam_size=1, without_timestamps=True)
    assert baseline.stats["npu"]["totals"]["fallbacks"] == 0
    return model, baseline


@pytest.mark.parametrize(
    "kind, after, times",
    [("timeout", 5, 3)]  # three launches mid-encoder time out: device and CPU results mix
    + [pytest.param(kind, 0, None, marks=pytest.mark.slow) for kind in CRASHING_FAULTS],
)
def test_the_transcript_with_a_fault_equals_the_one_without(kind, after, times, tiny_sim):
    model, baseline = tiny_sim
    if kind in OPENING_FAULTS:
        close_designs(model.encoder)
    with faults.inject(kind, after=after, times=times) as fault:
        result = xdna_ep.transcribe(AUDIO_DIR / "jfk.wav", model, temperature=0, beam_size=1, without_timestamps=True)
    assert result.text == baseline.text
    npu = result.stats["npu"]["totals"]
    counted = sum(count for cause, count in npu["fallback_causes"].items() if cause.endswith(CAUSES[kind]))  # "<op>: <cause>"
    assert counted == npu["fallbacks"] > 0
    if times is not None:
        assert fault.fired == times and counted == times


@pytest.mark.slow  # the subprocess test above covers strict transcription through the CLI
def test_a_strict_model_raises_on_a_fault_naming_the_node(tiny_sim, monkeypatch):
    from xdna_ep.audio import log_mel_spectrogram, pad_or_trim

    model, _ = tiny_sim
    monkeypatch.setattr(model.encoder, "strict", True)
    mel = pad_or_trim(log_mel_spectrogram(str(AUDIO_DIR / "jfk.wav")))
    with faults.inject("timeout", after=2, times=1), pytest.raises(FallbackError, match=r"1 NPU op call\(s\).*node '/.*ERT_CMD_STATE_TIMEOUT"):
        model.encode(mel)


@pytest.mark.slow
def test_eight_threads_transcribe_with_one_model_as_sequential_runs_do(tiny_sim):
    model, _ = tiny_sim
    clips = ["jfk.wav", "librispeech-1995-1837-0001.wav", "2412-153948-0000.flac", "espeak_fox.wav"]
    options = dict(temperature=0, beam_size=1, without_timestamps=True)
    sequential = {clip: xdna_ep.transcribe(AUDIO_DIR / clip, model, **options).text for clip in clips}
    texts: dict[str, str] = {}

    def worker(index: int) -> None:
        clip = clips[index % len(clips)]
        texts[f"{index}:{clip}"] = xdna_ep.transcribe(AUDIO_DIR / clip, model, **options).text

    run_threads({f"thread-{i}": (lambda i=i: worker(i)) for i in range(8)}, timeout_s=900)
    assert len(texts) == 8
    for key, text in texts.items():
        assert text == sequential[key.split(":", 1)[1]], key
