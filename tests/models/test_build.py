"""models/build.py on a small random Whisper: the KV cache of the graphs, the fusions, one copy of each weight,
and Hugging Face folders read through safetensors' NumPy API."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from xdna_ep.errors import ModelError
from xdna_ep.graph_passes.orchestrator import run_passes
from xdna_ep.models import build, registry
from xdna_ep.models.convert import WhisperDims
from xdna_ep.models.export import WeightsSource, load_weights

DIMS = WhisperDims(
    n_mels=80, n_audio_ctx=12, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
    n_vocab=100, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2,
)  # fmt: skip; n_text_ctx as Whisper's: the passes infer shapes at a past of 224 positions


def random_weights(dims: WhisperDims, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of every tensor Whisper has, under transformers' names, scaled like trained ones."""
    rng = np.random.default_rng(seed)
    d, ffn = dims.n_audio_state, 4 * dims.n_audio_state

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    weights = {
        "model.encoder.conv1.weight": w(d, dims.n_mels, 3), "model.encoder.conv1.bias": w(d),
        "model.encoder.conv2.weight": w(d, d, 3), "model.encoder.conv2.bias": w(d),
        "model.encoder.embed_positions.weight": w(dims.n_audio_ctx, d),
        "model.encoder.layer_norm.weight": 1 + w(d), "model.encoder.layer_norm.bias": w(d),
        "model.decoder.embed_tokens.weight": w(dims.n_vocab, d),
        "model.decoder.embed_positions.weight": w(dims.n_text_ctx, d),
        "model.decoder.layer_norm.weight": 1 + w(d), "model.decoder.layer_norm.bias": w(d),
    }  # fmt: skip
    blocks = [("encoder", i, ("self_attn",)) for i in range(dims.n_audio_layer)]
    blocks += [("decoder", i, ("self_attn", "encoder_attn")) for i in range(dims.n_text_layer)]
    for part, i, attentions in blocks:
        prefix = f"model.{part}.layers.{i}"
        for attention in attentions:
            for proj in ("q", "k", "v", "out"):
                weights[f"{prefix}.{attention}.{proj}_proj.weight"] = w(d, d)
                if proj != "k":
                    weights[f"{prefix}.{attention}.{proj}_proj.bias"] = w(d)
            weights[f"{prefix}.{attention}_layer_norm.weight"] = 1 + w(d)
            weights[f"{prefix}.{attention}_layer_norm.bias"] = w(d)
        weights.update({
            f"{prefix}.fc1.weight": w(ffn, d), f"{prefix}.fc1.bias": w(ffn),
            f"{prefix}.fc2.weight": w(d, ffn), f"{prefix}.fc2.bias": w(d),
            f"{prefix}.final_layer_norm.weight": 1 + w(d), f"{prefix}.final_layer_norm.bias": w(d),
        })  # fmt: skip
    return weights


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    build.write_models(random_weights(DIMS), DIMS, folder)
    return folder


def sessions(folder):
    return [
        ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
        for file in (registry.ENCODER_FILE, registry.DECODER_FILE, registry.DECODER_WITH_PAST_FILE)
    ]


def test_cached_steps_give_the_logits_of_the_whole_sequence(toy_folder):
    encoder, decoder, with_past = sessions(toy_folder)
    rng = np.random.default_rng(1)
    mel = rng.standard_normal((2, DIMS.n_mels, 2 * DIMS.n_audio_ctx)).astype(np.float32)
    states = encoder.run(None, {"input_features": mel})[0]
    assert states.shape == (2, DIMS.n_audio_ctx, DIMS.n_audio_state)
    tokens = rng.integers(0, DIMS.n_vocab, size=(2, 7), dtype=np.int64)
    full = decoder.run(["logits"], {"input_ids": tokens, "encoder_hidden_states": states})[0]  # (2, 7, n_vocab)

    first = dict(zip([o.name for o in decoder.get_outputs()],
                     decoder.run(None, {"input_ids": tokens[:, :4], "encoder_hidden_states": states})))
    past = {name.replace("present.", "past_key_values."): value for name, value in first.items() if name != "logits"}
    stepped = [first["logits"]]
    for position in (4, 5, 6):  # one token at a time, the cache concatenating past and new
        outputs = dict(zip([o.name for o in with_past.get_outputs()],
                           with_past.run(None, {"input_ids": tokens[:, position:position + 1], **past})))
        stepped.append(outputs.pop("logits"))
        past.update({name.replace("present.", "past_key_values."): value for name, value in outputs.items()})
        assert past["past_key_values.0.decoder.key"].shape == (2, DIMS.n_text_head, position + 1, 32)
    # the same sums in another order: float32 rounding only (measured 1.4e-6 on logits up to 3.5)
    np.testing.assert_allclose(np.concatenate(stepped, axis=1), full, rtol=0, atol=1e-5)
    assert np.all(np.isfinite(full))


def test_the_prompt_step_computes_logits_only_at_the_positions_asked_for(toy_folder):
    encoder, decoder, _ = sessions(toy_folder)
    rng = np.random.default_rng(2)
    states = encoder.run(None, {"input_features": rng.standard_normal((1, DIMS.n_mels, 2 * DIMS.n_audio_ctx), dtype=np.float32)})[0]
    feeds = {"input_ids": rng.integers(0, DIMS.n_vocab, size=(1, 6), dtype=np.int64), "encoder_hidden_states": states}
    full = decoder.run(["logits"], feeds)[0]  # not fed: every position, as optimum's graph
    assert full.shape == (1, 6, DIMS.n_vocab)
    picked = decoder.run(["logits"], {**feeds, build.LOGITS_POSITIONS: np.array([1, -1], dtype=np.int64)})[0]
    np.testing.assert_array_equal(picked, full[:, [1, -1]])  # the same rows through the same ops: exact


def test_the_passes_fuse_every_attention_and_linear_layer(toy_folder):
    layers = DIMS.n_audio_layer
    expected = {
        registry.ENCODER_FILE: {"attention.self": layers, "matmul+bias": 4 * layers, "matmul": layers,
                                "matmul+bias+gelu": layers},
        # decoder_model: + 2 cross K/V projections per layer, the output projection is a plain matmul
        registry.DECODER_FILE: {"attention.causal_self": layers, "attention.cross": layers, "matmul+bias": 7 * layers,
                                "matmul": 2 * layers + 1, "matmul+bias+gelu": layers},
        registry.DECODER_WITH_PAST_FILE: {"attention.causal_self": layers, "attention.cross": layers,
                                          "matmul+bias": 6 * layers, "matmul": layers + 1, "matmul+bias+gelu": layers},
    }  # fmt: skip
    for file, kinds in expected.items():
        _, report = run_passes(onnx.load(str(toy_folder / file)), profile="npu1")
        assert dict(report.kinds) == kinds, file
        assert report.rejections == (), file


def test_each_decoder_weight_is_stored_once_and_shared_by_both_graphs(toy_folder):
    weights = random_weights(DIMS)
    locations = {}
    for file in (registry.DECODER_FILE, registry.DECODER_WITH_PAST_FILE):
        model = onnx.load(str(toy_folder / file), load_external_data=False)
        for tensor in model.graph.initializer:
            if tensor.name == build.LOGITS_POSITIONS:  # an input's default, not a weight
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            assert tensor.data_location == onnx.TensorProto.EXTERNAL and info["location"] == build.DECODER_WEIGHTS_FILE
            assert locations.setdefault(tensor.name, info["offset"]) == info["offset"]  # same bytes for both graphs
    decoder_tensors = [name for name in weights if name.startswith("model.decoder.")]
    unique_bytes = sum(weights[name].nbytes for name in decoder_tensors)
    size = (toy_folder / build.DECODER_WEIGHTS_FILE).stat().st_size
    # every decoder tensor once (the embedding as its transpose), plus < 4 KiB of alignment per tensor
    assert unique_bytes <= size < unique_bytes + 4096 * len(decoder_tensors)
    assert len(set(locations.values())) == len(locations) == len(decoder_tensors)


def test_a_hugging_face_folder_is_read_with_safetensors(tmp_path):
    from safetensors.numpy import save_file

    weights = random_weights(DIMS)
    save_file(weights, str(tmp_path / "model.safetensors"))
    config = {
        "model_type": "whisper", "num_mel_bins": DIMS.n_mels, "max_source_positions": DIMS.n_audio_ctx,
        "d_model": DIMS.n_audio_state, "encoder_attention_heads": DIMS.n_audio_head,
        "encoder_layers": DIMS.n_audio_layer, "vocab_size": DIMS.n_vocab, "max_target_positions": DIMS.n_text_ctx,
        "decoder_attention_heads": DIMS.n_text_head, "decoder_layers": DIMS.n_text_layer, "suppress_tokens": [1, 2],
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, dims, extra = load_weights(WeightsSource("hf", (), tmp_path, "test"))
    assert dims == DIMS and extra["suppress_ids"] == [1, 2]
    assert loaded.keys() == weights.keys()
    assert all(np.array_equal(loaded[name], weights[name]) for name in weights)

    config["model_type"] = "bert"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not Whisper"):
        load_weights(WeightsSource("hf", (), tmp_path, "test"))


def test_a_missing_weight_is_named():
    weights = random_weights(DIMS)
    del weights["model.decoder.layers.1.fc2.bias"]
    with pytest.raises(ModelError, match="lack 'model.decoder.layers.1.fc2.bias'"):
        build.build_decoder(weights, DIMS, with_past=True)
