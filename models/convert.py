"""CTranslate2 Whisper weights -> NumPy arrays under transformers' Whisper names, and the model's dimensions.

CTranslate2's WhisperSpec names (left) and where they go in transformers' Whisper (right):

    encoder/conv{1,2}                                   model.encoder.conv{1,2}
    encoder/position_encodings/encodings   (1500, d)    model.encoder.embed_positions
    */layer_i/self_attention/linear_0       (3d, d)     self_attn.{q,k,v}_proj stacked; k bias slot is 0
    */layer_i/self_attention/linear_1                   self_attn.out_proj
    */layer_i/self_attention/layer_norm                 self_attn_layer_norm
    decoder/layer_i/attention/linear_0                  encoder_attn.q_proj
    decoder/layer_i/attention/linear_1      (2d, d)     encoder_attn.{k,v}_proj stacked
    decoder/layer_i/attention/linear_2                  encoder_attn.out_proj
    decoder/layer_i/attention/layer_norm                encoder_attn_layer_norm
    */layer_i/ffn/linear_{0,1}, ffn/layer_norm          fc1, fc2, final_layer_norm
    {encoder,decoder}/layer_norm                        {encoder,decoder}.layer_norm
    decoder/embeddings/weight (= projection alias)      model.decoder.embed_tokens (proj_out is tied)
    decoder/position_encodings/encodings    (448, d)    model.decoder.embed_positions
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xdna_ep.errors import ModelError
from xdna_ep.models.ct2 import Ct2Model

N_AUDIO_CTX = 1500  # encoder positions of a 30-s window
N_TEXT_CTX = 448  # decoder positions
ENGLISH_VOCAB = 51864  # English-only vocabulary; multilingual models have 51865
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>


@dataclass(frozen=True)
class WhisperDims:
    """The dimensions of a Whisper model, named as openai-whisper names them."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= ENGLISH_VOCAB + 1


def _count_layers(ct2: Ct2Model, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in ct2.variables:
        n += 1
    if n == 0:
        raise ModelError(f"model.bin has no {prefix} layers (no tensor '{prefix}/layer_0/ffn/linear_0/weight')")
    return n


def _scalar(ct2: Ct2Model, name: str) -> int:
    return int(np.asarray(ct2.get(name)).reshape(-1)[0])


def dims_from_ct2(ct2: Ct2Model) -> WhisperDims:
    """Read the model's dimensions off its tensors."""
    if ct2.spec_name != "WhisperSpec":
        raise ModelError(f"model.bin holds a '{ct2.spec_name}', not a Whisper model (WhisperSpec)")
    n_vocab, n_text_state = ct2.get("decoder/embeddings/weight").shape
    n_audio_state, n_mels, _ = ct2.get("encoder/conv1/weight").shape
    return WhisperDims(
        n_mels=n_mels,
        n_audio_ctx=ct2.get("encoder/position_encodings/encodings").shape[0],
        n_audio_state=n_audio_state,
        n_audio_head=_scalar(ct2, "encoder/num_heads"),
        n_audio_layer=_count_layers(ct2, "encoder"),
        n_vocab=n_vocab,
        n_text_ctx=ct2.get("decoder/position_encodings/encodings").shape[0],
        n_text_state=n_text_state,
        n_text_head=_scalar(ct2, "decoder/num_heads"),
        n_text_layer=_count_layers(ct2, "decoder"),
    )


def special_token_ids(n_vocab: int) -> dict[str, int]:
    """Whisper's special-token ids, derived from the vocabulary size.

    The vocabulary ends with the task tokens and 1501 timestamp tokens (0.00 s to 30.00 s in 0.02-s
    steps); English-only models (51864) start text at eot 50256, multilingual ones at 50257.
    """
    timestamp_begin = n_vocab - N_TIMESTAMPS
    eot = 50256 if n_vocab == ENGLISH_VOCAB else 50257
    ids = {
        "eot": eot,
        "sot": eot + 1,
        "translate": timestamp_begin - 6,
        "transcribe": timestamp_begin - 5,
        "sot_lm": timestamp_begin - 4,
        "sot_prev": timestamp_begin - 3,
        "no_speech": timestamp_begin - 2,
        "no_timestamps": timestamp_begin - 1,
        "timestamp_begin": timestamp_begin,
    }
    ids["n_languages"] = ids["translate"] - ids["sot"] - 1
    return ids


def hf_config(dims: WhisperDims, suppress_ids: list[int], begin_suppress_ids: list[int]):
    """The ``transformers.WhisperConfig`` of a model with these dimensions."""
    from transformers import WhisperConfig

    ids = special_token_ids(dims.n_vocab)
    if dims.n_audio_state != dims.n_text_state:
        raise ModelError(f"encoder width {dims.n_audio_state} differs from decoder width {dims.n_text_state}")
    return WhisperConfig(
        vocab_size=dims.n_vocab,
        num_mel_bins=dims.n_mels,
        encoder_layers=dims.n_audio_layer,
        encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer,
        decoder_attention_heads=dims.n_text_head,
        d_model=dims.n_audio_state,
        encoder_ffn_dim=4 * dims.n_audio_state,
        decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx,
        max_target_positions=dims.n_text_ctx,
        activation_function="gelu",
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        suppress_tokens=suppress_ids,
        begin_suppress_tokens=begin_suppress_ids,
        tie_word_embeddings=True,
    )


def dims_from_hf_config(config) -> WhisperDims:
    """The dimensions of a ``transformers.WhisperConfig`` (the inverse of ``hf_config``)."""
    return WhisperDims(
        n_mels=config.num_mel_bins,
        n_audio_ctx=config.max_source_positions,
        n_audio_state=config.d_model,
        n_audio_head=config.encoder_attention_heads,
        n_audio_layer=config.encoder_layers,
        n_vocab=config.vocab_size,
        n_text_ctx=config.max_target_positions,
        n_text_state=config.d_model,
        n_text_head=config.decoder_attention_heads,
        n_text_layer=config.decoder_layers,
    )


def hf_state_dict(ct2: Ct2Model, dims: WhisperDims) -> dict[str, np.ndarray]:
    """Map the CTranslate2 tensors to transformers' Whisper names, checking every shape on the way."""
    d = dims.n_audio_state
    ffn = 4 * d
    state: dict[str, np.ndarray] = {}

    def linear(ct2_name: str, hf_name: str, rows: int, cols: int) -> None:
        state[f"{hf_name}.weight"] = ct2.get(f"{ct2_name}/weight", (rows, cols))
        state[f"{hf_name}.bias"] = ct2.get(f"{ct2_name}/bias", (rows,))

    def layer_norm(ct2_name: str, hf_name: str) -> None:
        state[f"{hf_name}.weight"] = ct2.get(f"{ct2_name}/gamma", (d,))
        state[f"{hf_name}.bias"] = ct2.get(f"{ct2_name}/beta", (d,))

    def stacked(ct2_name: str, hf_prefix: str, names: tuple[str, ...]) -> None:
        weight = ct2.get(f"{ct2_name}/weight", (len(names) * d, d))
        bias = ct2.get(f"{ct2_name}/bias", (len(names) * d,))
        for index, name in enumerate(names):
            rows = slice(index * d, (index + 1) * d)
            state[f"{hf_prefix}.{name}_proj.weight"] = weight[rows]
            if name != "k":  # Whisper's key projections have no bias; CTranslate2 stores zeros there
                state[f"{hf_prefix}.{name}_proj.bias"] = bias[rows]

    def ffn_block(ct2_prefix: str, hf_prefix: str) -> None:
        linear(f"{ct2_prefix}/ffn/linear_0", f"{hf_prefix}.fc1", ffn, d)
        linear(f"{ct2_prefix}/ffn/linear_1", f"{hf_prefix}.fc2", d, ffn)
        layer_norm(f"{ct2_prefix}/ffn/layer_norm", f"{hf_prefix}.final_layer_norm")

    state["model.encoder.conv1.weight"] = ct2.get("encoder/conv1/weight", (d, dims.n_mels, 3))
    state["model.encoder.conv1.bias"] = ct2.get("encoder/conv1/bias", (d,))
    state["model.encoder.conv2.weight"] = ct2.get("encoder/conv2/weight", (d, d, 3))
    state["model.encoder.conv2.bias"] = ct2.get("encoder/conv2/bias", (d,))
    state["model.encoder.embed_positions.weight"] = ct2.get(
        "encoder/position_encodings/encodings", (dims.n_audio_ctx, d)
    )
    for i in range(dims.n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        stacked(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q", "k", "v"))
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", d, d)
        layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        ffn_block(src, dst)
    layer_norm("encoder/layer_norm", "model.encoder.layer_norm")

    state["model.decoder.embed_tokens.weight"] = ct2.get("decoder/embeddings/weight", (dims.n_vocab, d))
    state["model.decoder.embed_positions.weight"] = ct2.get(
        "decoder/position_encodings/encodings", (dims.n_text_ctx, d)
    )
    for i in range(dims.n_text_layer):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        stacked(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q", "k", "v"))
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", d, d)
        layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", d, d)
        stacked(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k", "v"))
        linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", d, d)
        layer_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        ffn_block(src, dst)
    layer_norm("decoder/layer_norm", "model.decoder.layer_norm")
    return state
