"""The exported real models: files, loadability in ONNX Runtime, the export's own check, the registry."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest

from xdna_ep.errors import ModelError
from xdna_ep.models import registry
from xdna_ep.models.export import VALIDATION_ATOL, VALIDATION_RTOL


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_exported_model_loads_and_passed_its_check(name):
    folder = registry.ensure_model(name)
    assert registry.missing_files(folder) == []
    config = registry.read_config(folder)
    validation = config["validation"]
    assert (validation["atol"], validation["rtol"]) == (VALIDATION_ATOL, VALIDATION_RTOL) == (1e-3, 1e-3)
    for key in ("encoder_max_abs_diff", "decoder_max_abs_diff", "decoder_with_past_max_abs_diff"):
        assert 0 <= validation[key] <= 2e-3, key  # the elementwise check already passed at export time
    for file in (registry.ENCODER_FILE, registry.DECODER_FILE, registry.DECODER_WITH_PAST_FILE):
        model = onnx.load(str(folder / file), load_external_data=False)
        assert model.ir_version <= 13
        ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
    # the tied token embedding is stored once (as the transposed output projection)
    decoder = onnx.load(str(folder / registry.DECODER_FILE))
    big = [t for t in decoder.graph.initializer if config["n_vocab"] in t.dims]
    assert len(big) == 1, [t.name for t in big]


def test_decoder_interfaces_match_the_pipeline_contract():
    folder = registry.ensure_model("tiny.en")
    layers = registry.read_config(folder)["n_text_layer"]
    with_past = ort.InferenceSession(str(folder / registry.DECODER_WITH_PAST_FILE), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in with_past.get_inputs()}
    assert "encoder_hidden_states" not in inputs
    assert {f"past_key_values.{i}.{part}.{kv}" for i in range(layers) for part in ("decoder", "encoder") for kv in ("key", "value")} <= inputs
    outputs = [o.name for o in with_past.get_outputs()]
    assert outputs[0] == "logits" and len(outputs) == 1 + 2 * layers


def test_unknown_model_and_missing_folder_are_clear(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'tiny.fr'"):
        registry.ensure_model("tiny.fr")
    with pytest.raises(ModelError, match="model folder not found"):
        registry.ensure_model(str(tmp_path / "nope" / "model"))


def test_folder_missing_a_file_names_it(tmp_path):
    folder = registry.ensure_model("tiny.en")
    partial = tmp_path / "partial"
    partial.mkdir()
    for file in registry.MODEL_FILES:
        if file != registry.DECODER_WITH_PAST_FILE:
            (partial / file).symlink_to(folder / file)
    with pytest.raises(ModelError, match="lacks decoder_with_past_model.onnx"):
        registry.ensure_model(partial)
