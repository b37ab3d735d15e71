"""Every design the planner emits for the Whisper encoders, verified against the hardware limits of a
profile (``kernels/verify.py``), with each tile's use of every resource. The command line is
``xdna-ep designs check`` (``python/xdna_ep/designs.py``).
"""

from __future__ import annotations

from collections import defaultdict

from xdna_ep.ep.cost_model import PRECISIONS
from xdna_ep.kernels.designs import N_AUDIO_CTX, Design, describe, encoder_designs, plan
from xdna_ep.kernels.softmax.spec import SoftmaxSpec
from xdna_ep.kernels.verify import Report, verify

# the encoders `designs check` covers: model -> (d_model, n_head)
CHECKED_ENCODERS = {"tiny.en": (384, 6), "base": (512, 8)}


def planned_designs(profile: str) -> list[Design]:
    """Every design (with all its runtime shapes) the planner emits for the checked encoders, both precisions."""
    from xdna_ep.ep import cost_model

    merged: dict[str, tuple[object, set]] = {}
    for d_model, n_head in CHECKED_ENCODERS.values():
        for precision in PRECISIONS:
            for design in plan(encoder_designs(d_model, n_head, profile, precision), profile):
                merged.setdefault(design.spec.name, (design.spec, set()))[1].update(design.shapes)
    softmax = SoftmaxSpec(cols=cost_model.round_up(N_AUDIO_CTX, cost_model.SOFTMAX_COL_MULTIPLE), profile=profile)
    for _, n_head in CHECKED_ENCODERS.values():
        rows = cost_model.round_up(n_head * N_AUDIO_CTX, softmax.row_multiple)
        merged.setdefault(softmax.name, (softmax, set()))[1].add((rows,))
    return [Design(spec, tuple(sorted(shapes))) for spec, shapes in merged.values()]


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
