"""Every design the planner emits for the Whisper encoders and decoders (tiny.en, base), verified
against the hardware limits of a profile (``kernels/verify.py``), with each tile's use of every resource. The command line is
``xdna-ep designs check`` (``python/xdna_ep/designs.py``).
"""

from __future__ import annotations

from collections import defaultdict

from xdna_ep.ep import cost_model
from xdna_ep.ep.cost_model import PRECISIONS
from xdna_ep.ep.device import get_profile
from xdna_ep.kernels.attention.spec import AttentionSpec
from xdna_ep.kernels.designs import HEAD_DIM, N_AUDIO_CTX, Design, build_list, describe
from xdna_ep.kernels.matmul.spec import MatmulSpec
from xdna_ep.kernels.verify import Report, verify

# the models `designs check` covers: model -> (d_model, n_head, vocabulary)
CHECKED_MODELS = {"tiny.en": (384, 6, 51864), "base": (512, 8, 51865)}
# the longest decoder input (Whisper's n_text_ctx): the first decoding step of a window with a long
# prompt places its GEMMs and attention on the NPU from about 32 positions on (the cost model)
N_TEXT_CTX = 448


def decoder_designs(profile: str) -> list[Design]:
    """The decoder shapes the partitioner may place, at their largest: GEMMs (q/k/v/out, fc1, fc2, the
    vocabulary projection) on the dynamic-K design, self- and cross-attention, both precisions."""
    device = get_profile(profile)
    gemms: set[tuple[int, int, int]] = set()
    attention: dict[str, set[tuple[int, int, int]]] = {}
    for d_model, n_head, vocabulary in CHECKED_MODELS.values():
        for precision in PRECISIONS:
            for k, n in ((d_model, d_model), (d_model, 4 * d_model), (4 * d_model, d_model), (d_model, vocabulary)):
                m_pad, k_pad, n_pad = cost_model.padded_gemm_shape(device, N_TEXT_CTX, k, n)
                gemms.add((m_pad, cost_model.GEMM_PARTS[precision] * k_pad, n_pad))
            for n_kv in (N_TEXT_CTX, N_AUDIO_CTX):
                n_q, kv_pad, d = cost_model.padded_attention_shape(device, N_TEXT_CTX, n_kv, HEAD_DIM)
                attention.setdefault(precision, set()).add((n_head, n_q, kv_pad))
    designs = [Design(MatmulSpec(k=None, profile=profile), tuple(sorted(gemms)))]
    designs += [Design(AttentionSpec(head_dim=HEAD_DIM, precision=precision, profile=profile), tuple(sorted(shapes)))
                for precision, shapes in attention.items()]  # fmt: skip
    return designs


def planned_designs(profile: str) -> list[Design]:
    """Every design (with all its runtime shapes) the planner emits for the checked models' encoders
    and decoders, both precisions; the decoder's shapes are merged into the encoder's designs."""
    encoders = {name: (d_model, n_head) for name, (d_model, n_head, _) in CHECKED_MODELS.items()}
    merged = {design.spec.name: design for design in build_list(profile, PRECISIONS, encoders)}
    for design in decoder_designs(profile):
        known = merged.get(design.spec.name)
        shapes = set(design.shapes) | set(known.shapes if known else ())
        merged[design.spec.name] = Design(design.spec, tuple(sorted(shapes)))
    return list(merged.values())


def check(profile: str) -> list[Report]:
    """One report per (design, runtime shape) of ``profile``."""
    return [verify(describe(design.spec, shape)) for design in planned_designs(profile) for shape in design.shapes]


def summary(report: Report) -> str:
    """One line per resource: the highest use on any tile of its kind, against the limit."""
    worst: dict[tuple[str, str], tuple[int, int]] = defaultdict(lambda: (0, 0))
    for usage in report.resources:
        key = (usage.tile.split("(")[0], usage.resource)
        worst[key] = max(worst[key], (usage.used, usage.limit))
    parts = [f"{kind} {resource} {used}/{limit}" for (kind, resource), (used, limit) in sorted(worst.items())]
    return "; ".join(parts)
