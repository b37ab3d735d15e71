"""The session API: device words, the two ways a user opens a session, and transcription through the
fused graphs reproducing the golden tokens."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import AUDIO_DIR
from real_sessions import OneModel, model_folder, plain_options, real_inputs

import xdna_ep
from xdna_ep.ep import session as session_module
from xdna_ep.ep.executor import ReferenceExecutor
from xdna_ep.errors import DeviceError, ModelError
from xdna_ep.graph_passes import xdna_ops

# every clip of goldens.json, jfk.wav first (the one that also runs outside the slow set)
GOLDEN_CLIPS = sorted(json.loads((AUDIO_DIR / "goldens.json").read_text()), key=lambda clip: clip != "jfk.wav")


def test_an_unknown_device_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown device 'gpu': valid devices are cpu, sim, npu, auto"):
        xdna_ep.InferenceSession("whatever.onnx", device="gpu")


@pytest.mark.skipif(session_module.npu_present(), reason="an NPU is present: auto picks it")
def test_auto_without_an_npu_says_it_runs_on_the_cpu(caplog, monkeypatch):
    monkeypatch.setattr(session_module, "_auto_announced", set())
    with caplog.at_level(logging.WARNING, logger="xdna_ep.ep.session"):
        assert session_module.resolve_device("auto") == "cpu"
    assert any("no NPU here" in record.getMessage() for record in caplog.records)


@pytest.mark.skipif(session_module.npu_present(), reason="an NPU is present")
def test_device_npu_without_an_npu_is_an_error_when_the_session_opens(tiny_en):
    folder, _ = tiny_en
    with pytest.raises(DeviceError, match="(?i)npu"):
        xdna_ep.InferenceSession(folder / "decoder_with_past_model.onnx", device="npu")
    with pytest.raises(DeviceError, match="no NPU here"):
        xdna_ep.session_options(device="npu")


def test_a_missing_model_is_a_model_error():
    with pytest.raises(ModelError, match="ONNX model not found"):
        xdna_ep.compile("/nonexistent/encoder_model.onnx")


@pytest.fixture(scope="module")
def tiny_en():
    folder = model_folder("tiny.en")
    return folder, real_inputs(folder)


def test_session_options_plus_compile_plus_a_plain_onnxruntime_session(tiny_en):
    folder, feeds = tiny_en
    path = folder / "decoder_with_past_model.onnx"
    options = xdna_ep.session_options()
    model = xdna_ep.compile(path, profile="npu1", placement="npu", device="cpu")
    assert any(node.domain == xdna_ops.DOMAIN for node in model.graph.node)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = ort.InferenceSession(str(path), plain_options(), providers=["CPUExecutionProvider"])
    feed = feeds["decoder_with_past_model"]
    for want, got in zip(expected.run(None, feed), session.run(None, feed)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_device_cpu_opens_the_stock_graph(tiny_en):
    folder, feeds = tiny_en
    session = xdna_ep.InferenceSession(folder / "encoder_model.onnx", device="cpu")
    assert session.compiled is None and session.report is None
    assert isinstance(session, ort.InferenceSession)


def test_device_sim_runs_the_fused_graph_and_reports_placements(tiny_en):
    folder, feeds = tiny_en
    session = xdna_ep.InferenceSession(folder / "decoder_with_past_model.onnx", device="sim", profile="npu1")
    report = session.report
    assert report.role == "decoder_with_past" and report.fused_total > 0
    assert all(p.placement == "cpu" for p in report.placements)  # one token per step: the CPU wins
    stock = onnx.load(str(folder / "decoder_with_past_model.onnx"))
    want = ort.InferenceSession(stock.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds["decoder_with_past_model"])
    got = session.run(None, feeds["decoder_with_past_model"])
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "model_name, clip",
    [("tiny.en", "jfk.wav")]
    + [pytest.param("tiny.en", clip, marks=pytest.mark.slow) for clip in GOLDEN_CLIPS[1:]]
    + [pytest.param("base", clip, marks=pytest.mark.slow) for clip in GOLDEN_CLIPS],
)
def test_transcription_through_the_fused_graphs_reproduces_the_golden_tokens(model_name, clip, goldens, monkeypatch):
    """Every fusable node of the three sessions fused and placed on the "NPU", computed by the fp32
    NumPy reference: the pipeline's tokens equal faster-whisper's fp32 goldens."""
    from xdna_ep.transcribe import TranscribeOptions, transcribe

    monkeypatch.setenv(session_module.PLACEMENT_ENV, "npu")
    monkeypatch.setattr(session_module, "make_executor", lambda device, profile, precision: ReferenceExecutor())
    model = _fused_models.get((model_name,), lambda: xdna_ep.load_model(model_name, device="sim"))
    options = TranscribeOptions.from_kwargs(
        temperature=0.0, beam_size=1, without_timestamps=True, condition_on_previous_text=False, language="en"
    )
    result = transcribe(model, AUDIO_DIR / clip, options)
    tokens = [token for segment in result.segments for token in segment.tokens]
    assert tokens == goldens[clip][model_name]["tokens"]


_fused_models = OneModel()  # one fused model at a time (1.5 GB each)


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    yield
    _fused_models.clear()


def _executor_of(model: onnx.ModelProto):
    from xdna_ep.ep import registry

    return registry.lookup(session_module.model_key(model)).executor()


def test_two_sessions_on_different_devices_in_one_process_each_run_where_they_were_told(tiny_en):
    from xdna_ep.ep.npu_executor import NpuExecutor

    folder, feeds = tiny_en
    path = folder / "decoder_with_past_model.onnx"
    feed = feeds["decoder_with_past_model"]
    on_sim = xdna_ep.compile(path, placement="npu", device="sim")
    sim_session = ort.InferenceSession(on_sim.SerializeToString(), xdna_ep.session_options("sim"), providers=["CPUExecutionProvider"])
    on_cpu = xdna_ep.compile(path, placement="npu", device="cpu")
    cpu_options = xdna_ep.session_options("cpu")  # a later session_options() retargets nothing
    cpu_session = ort.InferenceSession(on_cpu.SerializeToString(), cpu_options, providers=["CPUExecutionProvider"])
    sim_out, cpu_out = sim_session.run(None, feed), cpu_session.run(None, feed)
    assert isinstance(_executor_of(on_sim), NpuExecutor) and _executor_of(on_sim).statistics.device == "sim"
    assert isinstance(_executor_of(on_cpu), ReferenceExecutor)
    assert _executor_of(on_sim).statistics.totals()["calls"] > 0  # the simulator computed the sim session's ops
    assert np.abs(sim_out[0] - cpu_out[0]).max() > 0  # bf16 on the simulator vs the fp32 reference
    xdna_ep.release(on_sim)
    xdna_ep.release(on_cpu)


def test_session_options_can_be_reused_for_several_sessions(tiny_en):
    folder, feeds = tiny_en
    options = xdna_ep.session_options()
    assert session_module.has_xdna_ops(options)
    path = folder / "decoder_with_past_model.onnx"
    sessions = [
        xdna_ep.InferenceSession(path, device="cpu", sess_options=options),
        xdna_ep.InferenceSession(path, device="sim", placement="npu", sess_options=options),
        xdna_ep.InferenceSession(path, device="sim", placement="npu", sess_options=options),
    ]
    outputs = [session.run(None, feeds["decoder_with_past_model"])[0] for session in sessions]
    np.testing.assert_allclose(outputs[2], outputs[1], rtol=0, atol=0)


def test_a_released_session_releases_its_weights(tiny_en):
    import gc

    from xdna_ep.ep import registry

    folder, _ = tiny_en
    session = xdna_ep.InferenceSession(folder / "decoder_with_past_model.onnx", device="sim", placement="npu")
    key = session.compiled.key
    assert key in registry.registered_keys() and session.compiled.weights
    del session
    gc.collect()
    assert key not in registry.registered_keys()
    model = xdna_ep.compile(folder / "decoder_with_past_model.onnx", placement="npu", device="cpu")
    xdna_ep.release(model)
    assert session_module.model_key(model) not in registry.registered_keys()


def test_a_saved_compiled_model_loads_in_a_fresh_process_with_its_placement(tiny_en, tmp_path):
    import subprocess
    import sys

    folder, feeds = tiny_en
    feed = feeds["decoder_model"]
    model = xdna_ep.compile(folder / "decoder_model.onnx", placement="npu", device="cpu")
    expected = ort.InferenceSession(model.SerializeToString(), xdna_ep.session_options(), providers=["CPUExecutionProvider"]).run(None, feed)
    path = xdna_ep.save(model, tmp_path / "decoder.xdna.onnx")
    xdna_ep.release(model)
    data = tmp_path / "decoder.xdna.onnx.data"
    assert data.stat().st_size > 10 * path.stat().st_size  # the weights are external data
    np.savez(tmp_path / "feed.npz", **feed)
    script = f"""
import numpy as np, xdna_ep
from xdna_ep.graph_passes import xdna_ops
feed = dict(np.load({str(tmp_path / 'feed.npz')!r}))
for device in ("cpu", "sim"):
    session = xdna_ep.InferenceSession({str(path)!r}, device=device)
    assert session.report is None  # no passes ran: the placement is the saved one
    np.savez({str(tmp_path)!r} + f"/out_{{device}}.npz", *session.run(None, feed))
print(sum(xdna_ops.is_xdna(n) for n in __import__("onnx").load({str(path)!r}, load_external_data=False).graph.node))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) == sum(xdna_ops.is_xdna(n) for n in model.graph.node) > 0
    on_cpu = np.load(tmp_path / "out_cpu.npz")
    for index, want in enumerate(expected):
        np.testing.assert_array_equal(on_cpu[f"arr_{index}"], want)  # the same reference executor, same weights
    on_sim = np.load(tmp_path / "out_sim.npz")
    # bf16 on the simulator vs the fp32 reference: relative RMS measured 0.0064 on these logits
    logits = on_sim["arr_0"].astype(np.float64)
    assert np.linalg.norm(logits - expected[0]) / np.linalg.norm(expected[0]) < 0.015


def test_saving_a_model_that_was_not_compiled_names_the_problem(tiny_en, tmp_path):
    folder, _ = tiny_en
    with pytest.raises(ModelError, match="only a model returned by xdna_ep.compile"):
        xdna_ep.save(onnx.load(str(folder / "decoder_model.onnx")), tmp_path / "x.onnx")
