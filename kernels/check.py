"""Every design the planner emits for the Whisper encoders, verified against the hardware limits of a
profile (``kernels/verify.py``), with each tile's use of every resource. The command line is
``xdna-ep designs check`` (``python/xdna_ep/designs.py``).
"""

from __future__ import annotations

from collections import defaultdict

from xdna_ep.ep.cost_model import PRECISIONS
from xdna_ep.kernels.designs import Design, build_list, describe
from xdna_ep.kernels.verify import Report, verify

# the encoders `designs check` covers: model -> (d_model, n_head)
CHECKED_ENCODERS = {"tiny.en": (384, 6), "base": (512, 8)}


def planned_designs(profile: str) -> list[Design]:
    """Every design (with all its runtime shapes) the planner emits for the checked encoders, both precisions."""
    return build_list(profile, PRECISIONS, CHECKED_ENCODERS)


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
