"""The real exported Whisper models on the simulated NPU: launches, bytes, accuracy, transcripts.

- One encoder pass makes exactly one launch per encoder node placed on the NPU.
- Per pass only activations travel: the bytes to the device equal the cost model's activation bytes of
  the NPU nodes; the weights went once, when the session was created.
- ``accurate`` precision reproduces goldens.json tokens exactly; ``bf16`` is compared with the CPU
  transcript (word error rate written at the call site).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from real_sessions import OneModel
from xdna_ep.ep import cost_model, stats

ROOT = Path(__file__).resolve().parents[2]
AUDIO_DIR = ROOT.parent / "shared" / "audio"
GOLDEN_CLIPS = ["jfk.wav", "librispeech-1995-1837-0001.wav", "2412-153948-0000.flac", "libri-1088-134315-0000.wav"]


def _encoder_input(clip: str = "jfk.wav") -> np.ndarray:
    from xdna_ep.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim

    mel = pad_or_trim(log_mel_spectrogram(load_audio(AUDIO_DIR / clip)), N_FRAMES)
    return np.asarray(mel, dtype=np.float32)[None]  # (1, n_mels, 3000)


def _npu_executor_stats(session) -> dict:
    return session.compiled.executor().stats()


@pytest.fixture(scope="module")
def tiny_encoder():
    import xdna_ep
    from xdna_ep.models.registry import ensure_model

    folder = ensure_model("tiny.en")
    session = xdna_ep.InferenceSession(folder / "encoder_model.onnx", device="sim", profile="npu1", precision="bf16")
    return folder, session


def test_encoder_pass_launches_once_per_npu_node_and_sends_activations_only(tiny_encoder):
    folder, session = tiny_encoder
    features = _encoder_input()
    npu_nodes = session.report.placed("npu")
    assert len(npu_nodes) == 4 * 6 + 4  # tiny.en: q, k, v, out, fc1, fc2 and the attention, per layer
    executor = session.compiled.executor()
    weights_after_load = executor.statistics.weight_bytes_to_device
    assert weights_after_load > 4 * 6 * 384 * 384 * 2  # every weight went, in bf16 (fc1/fc2 are 4x larger)
    session.run(None, {"input_features": features})  # first pass: loads designs and instruction streams
    weights_after_first = executor.statistics.weight_bytes_to_device
    executor.statistics.reset()
    session.run(None, {"input_features": features})
    totals = executor.stats()["totals"]
    assert totals["launches"] == len(npu_nodes)
    assert totals["calls"] == len(npu_nodes)
    assert totals["fallbacks"] == 0
    assert executor.statistics.weight_bytes_to_device == weights_after_first  # no weight sent again
    expected_to_device = 0
    for placement in npu_nodes:
        dims = dict(re.findall(r"(\w+)=(\d+)", placement.shape))
        dims = {name: int(value) for name, value in dims.items()}
        if placement.kind.startswith("matmul"):
            estimate = cost_model.estimate_matmul("npu1", dims["m"], dims["k"], dims["n"])
        else:
            estimate = cost_model.estimate_attention(
                "npu1", dims.get("b", 1), dims["h"], dims["q"], dims["kv"], dims["d"]
            )
        expected_to_device += estimate.bytes_to_device
    assert totals["bytes_to_device"] == expected_to_device


def test_encoder_pass_runs_its_gemms_on_the_dynamic_k_design_with_two_switches_per_layer(tiny_encoder):
    folder, session = tiny_encoder
    gemm_plan = session.compiled.gemm_plan
    assert gemm_plan.dynamic_k, gemm_plan.reason
    assert (gemm_plan.per_k_switches, gemm_plan.dynamic_switches) == (4 * 4, 2 * 4)  # tiny.en: 4 layers
    feed = {"input_features": _encoder_input()}
    executor = session.compiled.executor()
    session.run(None, feed)  # designs loaded; the array ends the pass on the GEMM design
    passes = []
    for _ in range(2):
        executor.statistics.reset()
        session.run(None, feed)
        passes.append(executor.stats())
    totals = passes[0]["totals"]
    assert totals["launches"] == len(session.report.placed("npu"))
    assert totals["design_switches"] == 2 * 4  # GEMM -> attention -> GEMM in each of 4 layers
    designs = {node["design"] for node in passes[0]["nodes"].values()}
    assert designs == {"xdna_matmul_kdyn_npu1", "xdna_attention_d64_bf16_npu1"}
    # the modelled time is a function of the pass alone: the same on every pass, to the last bit
    assert passes[1]["totals"]["modelled_device_s"] == totals["modelled_device_s"]
    assert passes[1]["totals"]["design_switches"] == totals["design_switches"]


def test_encoder_on_the_simulated_npu_matches_the_cpu_encoder(tiny_encoder):
    import onnxruntime as ort

    folder, session = tiny_encoder
    features = _encoder_input()
    cpu = ort.InferenceSession(str(folder / "encoder_model.onnx"), providers=["CPUExecutionProvider"])
    expected = cpu.run(None, {"input_features": features})[0]
    got = session.run(None, {"input_features": features})[0]
    correlation = np.corrcoef(got.ravel().astype(np.float64), expected.ravel())[0, 1]
    assert correlation >= 0.9999  # bf16 operands through 4 layers
    assert np.abs(got - expected).max() < 0.5  # activations of magnitude up to ~50


def test_stats_snapshot_reports_the_encoder(tiny_encoder):
    folder, session = tiny_encoder
    stats.reset()
    session.run(None, {"input_features": _encoder_input()})
    line = stats.summary()
    assert "28 launches" in line and "modelled device time" in line


def _transcribe_tokens(model_name: str, clip: str, precision: str):
    from xdna_ep.transcribe import TranscribeOptions, transcribe

    # the settings goldens.json was produced with (faster-whisper: beam 1, temperature 0, no timestamps)
    options = TranscribeOptions.from_kwargs(
        temperature=0.0, beam_size=1, without_timestamps=True, condition_on_previous_text=False, language="en"
    )
    result = transcribe(_loaded(model_name, precision), AUDIO_DIR / clip, options)
    return [token for segment in result.segments for token in segment.tokens], result


_models = OneModel()  # one simulated-NPU model at a time (1.5 GB each)


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    yield
    _models.clear()


def _loaded(model_name: str, precision: str):
    from xdna_ep import load_model

    return _models.get(
        (model_name, precision), lambda: load_model(model_name, device="sim", profile="npu1", precision=precision)
    )


@pytest.mark.parametrize(
    ("model_name", "clip"),
    [("tiny.en", "jfk.wav")]
    + [pytest.param("tiny.en", clip, marks=pytest.mark.slow) for clip in GOLDEN_CLIPS[1:]]
    + [pytest.param("base", clip, marks=pytest.mark.slow) for clip in GOLDEN_CLIPS[:2]],  # base is 3x slower
)
def test_accurate_precision_reproduces_the_golden_tokens(model_name, clip, goldens):
    tokens, result = _transcribe_tokens(model_name, clip, "accurate")
    assert tokens == goldens[clip][model_name]["tokens"]
    npu = result.stats["npu"]  # what the transcription did on the (simulated) NPU, for the json output
    assert npu["device"] == "sim" and npu["precision"] == "accurate"
    assert npu["totals"]["launches"] >= 4 * 7  # at least the encoder pass: 6 GEMMs + attention per layer
    assert npu["totals"]["fallbacks"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_bf16_transcripts_equal_the_cpu_transcripts(model_name, goldens):
    import jiwer

    def normalise(text: str) -> str:
        return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())

    references, hypotheses = [], []
    for clip in GOLDEN_CLIPS if model_name == "tiny.en" else GOLDEN_CLIPS[:2]:
        _, result = _transcribe_tokens(model_name, clip, "bf16")
        references.append(normalise(goldens[clip][model_name]["text"]))  # the fp32 CPU transcript
        hypotheses.append(normalise(result.text))
    # measured: the same words as the CPU on every clip, through the design-level simulator (WER 0)
    assert hypotheses == references, (jiwer.wer(references, hypotheses), list(zip(references, hypotheses)))
