"""``xdna-ep designs``: the NPU designs as described, checked and simulated.

    xdna-ep designs check [--profile npu1|npu2] [--json]   # hardware limits; exit 1 naming design, tile, limit
    xdna-ep designs time [--profile npu1|npu2]             # host time of the design-level simulator per launch

``check`` verifies every design the planner emits for the tiny.en and base encoders
(``kernels/check.py``). ``time`` runs one launch of each tiny.en encoder design shape through the
design-level simulator (``ep/design_sim.py``) and through the op reference, and prints both host
times and their ratio (best of 3).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check_parser = sub.add_parser("check", help="verify every planned design against the hardware limits")
    check_parser.add_argument("--profile", default="npu1", choices=("npu1", "npu2"))
    check_parser.add_argument("--json", action="store_true", help="one object per design: name, resources, violations")
    time_parser = sub.add_parser("time", help="host time of the design-level simulator vs the op reference")
    time_parser.add_argument("--profile", default="npu1", choices=("npu1", "npu2"))


def _best(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def time_launches(profile: str) -> list[tuple[str, float, float]]:
    """(design shape, simulator s, reference s) for the tiny.en encoder's GEMM and attention shapes."""
    from xdna_ep.ep import design_sim
    from xdna_ep.kernels.attention import design as attention_design
    from xdna_ep.kernels.attention import reference as attention_reference
    from xdna_ep.kernels.attention import tile as attention_tile
    from xdna_ep.kernels.designs import describe, encoder_designs
    from xdna_ep.kernels.matmul import design as matmul_design
    from xdna_ep.kernels.matmul import reference as matmul_reference
    from xdna_ep.kernels.matmul import tile as matmul_tile

    rng = np.random.default_rng(0)
    rows = []
    for design in encoder_designs(384, 6, profile, "bf16"):
        spec = design.spec
        for shape in design.shapes:
            flow = describe(spec, shape)
            if spec.kind == "matmul":
                m, k, n = shape
                n_tile = spec.tile[2]
                a = matmul_reference.prepare_activations(rng.standard_normal((m, k)).astype(np.float32), k, "bf16")
                tiled = matmul_reference.prepare_weight(rng.standard_normal((k, n)).astype(np.float32), k, n, n_tile, "bf16")
                params = matmul_reference.prepare_params(None, "", n, n_tile)
                host = {"a": a.reshape(-1), "b": matmul_design.pack_weight(tiled, params, k, n, spec),
                        "c": np.zeros(m * n, np.float32)}  # fmt: skip
                model = matmul_tile

                def oracle(a=a, tiled=tiled, params=params, m=m, k=k, n=n, n_tile=n_tile):
                    matmul_reference.run_on_device(a.reshape(-1), tiled, params, m, k, n, n_tile)
            else:
                heads, n_q, n_kv = shape
                d = spec.head_dim
                bits = [attention_reference.prepare_operand(rng.standard_normal((heads, n, d)).astype(np.float32), n, d,
                                                            spec.precision) for n in (n_q, n_kv, n_kv)]  # fmt: skip
                params = attention_reference.prepare_params(0.125, n_q, n_kv, False)
                host = {"q": attention_design.pack_q(bits[0], params, spec), "kv": attention_design.pack_kv(bits[1], bits[2]),
                        "o": np.zeros(heads * n_q * d, np.float32)}  # fmt: skip
                model = attention_tile

                def oracle(bits=bits, params=params, heads=heads, n_q=n_q, n_kv=n_kv, d=d, spec=spec):
                    flat = [b.reshape(-1) for b in bits]
                    attention_reference.run_on_device(*flat, params, heads, n_q, n_kv, d, spec.precision)

            simulated = _best(lambda: design_sim.run(flow, host, lambda f, s: model.run_cores(f, s, spec)))
            rows.append((flow.name, simulated, _best(oracle)))
    return rows


def run_command(args: argparse.Namespace) -> int:
    if args.action == "time":
        for name, simulated, reference in time_launches(args.profile):
            print(f"{name}: design-level simulator {simulated * 1e3:.0f} ms, op reference {reference * 1e3:.0f} ms, "
                  f"ratio {simulated / reference:.1f}")  # fmt: skip
        return 0
    from xdna_ep.kernels.check import check, summary

    reports = check(args.profile)
    if args.json:
        print(json.dumps([report.as_dict() for report in reports], indent=1))
    else:
        for report in reports:
            verdict = "ok" if report.ok else f"{len(report.violations)} violation(s)"
            print(f"{report.name}: {verdict}")
            print(f"  worst tile per resource: {summary(report)}")
            for violation in report.violations:
                print(f"  VIOLATION {violation}")
    return 0 if all(report.ok for report in reports) else 1
