"""What a pass saw: the nodes it fused and, for each candidate it did not fuse, the reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rejection:
    """A candidate that did not match: where it was anchored and why not."""

    pass_name: str
    anchor: str  # name of the candidate's anchor node (Softmax, MatMul, ...)
    reason: str


@dataclass
class MatchLog:
    """Collects fusions (by kind) and rejections across passes."""

    fused: Counter = field(default_factory=Counter)  # kind -> count, e.g. "matmul", "attention.cross"
    rejections: list[Rejection] = field(default_factory=list)

    def add_fused(self, kind: str) -> None:
        self.fused[kind] += 1

    def reject(self, pass_name: str, anchor: str, reason: str) -> None:
        self.rejections.append(Rejection(pass_name, anchor, reason))
