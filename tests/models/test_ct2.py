"""The model.bin reader and the CTranslate2 -> transformers mapping, on real and on damaged weights."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from xdna_ep.errors import ModelError
from xdna_ep.models import registry
from xdna_ep.models.convert import dims_from_ct2, hf_state_dict, special_token_ids
from xdna_ep.models.ct2 import Ct2Model, parse_model_bin, read_model_bin


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None, version: int = 6) -> bytes:
    """The inverse of the reader, for tests: float32 tensors as dtype code 0."""
    out = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, array in variables.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        out += _string(name) + struct.pack("<B", array.ndim) + struct.pack("<" + "I" * array.ndim, *array.shape)
        out += struct.pack("<BI", 0, array.nbytes) + array.tobytes()
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    return out


def test_round_trip_and_alias():
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = parse_model_bin(write_model_bin({"a/weight": weight}, {"b/weight": "a/weight"}))
    assert model.spec_name == "WhisperSpec"
    np.testing.assert_array_equal(model.get("b/weight"), weight)


def test_truncated_file_names_the_offset():
    data = write_model_bin({"a/weight": np.ones((4, 4), np.float32)})
    with pytest.raises(ModelError, match="truncated"):
        parse_model_bin(data[:-20])


def test_unknown_version_is_refused():
    with pytest.raises(ModelError, match="binary version 99"):
        parse_model_bin(write_model_bin({}, version=99))


def test_missing_and_misshaped_tensors_are_named():
    model = Ct2Model("WhisperSpec", 3, {"x": np.zeros((2, 2), np.float32)})
    with pytest.raises(ModelError, match="no tensor 'y'"):
        model.get("y")
    with pytest.raises(ModelError, match=r"'x' has shape \(2, 2\), expected \(3, 2\)"):
        model.get("x", (3, 2))


@pytest.fixture(scope="module")
def tiny_ct2():
    return read_model_bin(registry.PACKAGED["tiny.en"].weight_files())


def test_real_tiny_en_dims(tiny_ct2):
    dims = dims_from_ct2(tiny_ct2)
    assert (dims.n_audio_layer, dims.n_audio_state, dims.n_audio_head, dims.n_vocab) == (4, 384, 6, 51864)
    assert not dims.is_multilingual


def test_real_weights_with_a_tensor_removed_fail_naming_it(tiny_ct2):
    variables = dict(tiny_ct2.variables)
    del variables["encoder/layer_2/ffn/linear_1/weight"]
    damaged = Ct2Model(tiny_ct2.spec_name, tiny_ct2.spec_revision, variables)
    with pytest.raises(ModelError, match="encoder/layer_2/ffn/linear_1/weight"):
        hf_state_dict(damaged, dims_from_ct2(tiny_ct2))


def test_real_weights_with_a_misshaped_tensor_fail_naming_it(tiny_ct2):
    variables = dict(tiny_ct2.variables)
    variables["decoder/layer_1/attention/linear_1/weight"] = np.zeros((384, 384), np.float32)
    damaged = Ct2Model(tiny_ct2.spec_name, tiny_ct2.spec_revision, variables)
    with pytest.raises(ModelError, match=r"decoder/layer_1/attention/linear_1/weight' has shape \(384, 384\), expected \(768, 384\)"):
        hf_state_dict(damaged, dims_from_ct2(tiny_ct2))


def test_qkv_split_and_zero_key_bias(tiny_ct2):
    state = hf_state_dict(tiny_ct2, dims_from_ct2(tiny_ct2))
    stacked = tiny_ct2.get("encoder/layer_0/self_attention/linear_0/weight")
    np.testing.assert_array_equal(state["model.encoder.layers.0.self_attn.k_proj.weight"], stacked[384:768])
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in state
    assert not np.any(tiny_ct2.get("encoder/layer_0/self_attention/linear_0/bias")[384:768])


@pytest.mark.parametrize(
    ("n_vocab", "expected"),
    [
        (51864, {"eot": 50256, "sot": 50257, "transcribe": 50358, "no_timestamps": 50362, "timestamp_begin": 50363}),
        (51865, {"eot": 50257, "sot": 50258, "transcribe": 50359, "no_timestamps": 50363, "timestamp_begin": 50364}),
    ],
)
def test_special_tokens_match_the_packaged_tokenizers(n_vocab, expected):
    ids = special_token_ids(n_vocab)
    assert {key: ids[key] for key in expected} == expected
    assert ids["n_languages"] == 99
