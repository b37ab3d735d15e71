"""``xdna-ep bench``: what one 30-s encoder pass costs on the NPU, per model, and where the time goes.

    xdna-ep bench --device sim [--profile npu1] [--precision bf16] [--model tiny.en --model base] [--json]
    xdna-ep bench --calibration [--json]      the timing model against published measurements (ep/calibration.py)

For each model the encoder is compiled for the NPU, run once to load its designs, then run on a real
30-s window (jfk.wav's log-mel padded to 3000 frames, as the pipeline feeds it) three times with the
counters reset each time; the pass with the median wall time is reported. Printed per model: NPU
nodes, launches, design switches, hardware contexts, bytes each way,
the modelled device time on the profile's NPU split into compute, design switches, launches, runtime
parameters (dynamic-K GEMM design) and transfers, and by op kind (bottom-up, ``kernels/timing.py``;
a range over the unverified cost of an fp32 multiply), the session's GEMM design plan and its reason
(``kernels/designs.py``), the host time measured here (bf16 packing and copies, the partitioned graph's
CPU nodes, the op boundary), the clip's log-mel and decoder on the CPU (the modelled wall time of a
whole transcription), and ONNX Runtime's CPU encoder on the same input for scale. Also the host overhead of one xdna op at the Python boundary (``ep/ops.py``'s measurement).

On ``--device sim`` the device time is modelled (the simulator's wall time is NumPy's, not the NPU's);
on ``--device npu`` the measured wall time of the launches is printed next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_MODELS = ("tiny.en", "base")
# whisper-xdna (Hawk Point, Ryzen 7 PRO 8845HS), tiny encoder at the full 1500-position context (npu.md)
WHISPER_XDNA_TINY_MS = 484.0
PUBLISHED_GEMM_TFLOPS = (1.5, 1.8)  # whisper-xdna's whole-array bf16 GEMM rates (npu.md)


@dataclass(frozen=True)
class BenchOptions:
    """What ``bench`` measures."""

    device: str = "sim"  # where the xdna ops run: "sim" or "npu"
    profile: str = "npu1"
    precision: str = "bf16"
    models: tuple[str, ...] = DEFAULT_MODELS
    audio: str = ""  # a clip for the encoder input; "" = jfk.wav shipped with xdna-ep
    cpu_repeats: int = 3  # encoder passes measured, NPU session and ONNX Runtime CPU alike (median)

    def __post_init__(self) -> None:
        from xdna_ep.ep.cost_model import check_precision
        from xdna_ep.ep.device import get_profile

        if self.device not in ("sim", "npu", "cpu"):  # cpu: --memory only (run_command)
            raise ValueError(f"bench measures an NPU device, 'sim' or 'npu' ('cpu' for --memory), not {self.device!r}")
        check_precision(self.precision)
        get_profile(self.profile)
        if not self.models:
            raise ValueError("bench needs at least one model")
        if self.cpu_repeats < 1:
            raise ValueError(f"cpu_repeats must be >= 1, got {self.cpu_repeats}")


@dataclass
class EncoderBench:
    """One model's encoder pass."""

    model: str
    npu_nodes: int
    node_kinds: dict[str, int]
    launches: int
    design_switches: int
    designs: list[str]
    hw_contexts: int  # designs this model's encoder needs (one hardware context each)
    bytes_to_device: int
    bytes_from_device: int
    weight_bytes: int
    modelled_s: float
    compute_s: float
    switch_s: float
    launch_s: float
    runtime_parameters_s: float  # the dynamic-K GEMM design's per-launch runtime parameters
    transfer_s: float
    npu_flops: int
    executor_host_s: float
    device_wall_s: float
    session_s: float  # wall time of the whole session.run here
    cpu_encoder_s: float  # ONNX Runtime CPU encoder, same input, median
    gemm_designs: str = ""  # the session's GEMM plan and why (kernels/designs.py)
    host_per_kind_s: dict[str, float] = field(default_factory=dict)  # mean executor host time per call
    compute_per_kind_s: dict[str, float] = field(default_factory=dict)  # modelled array time per op kind
    compute_high_s: float = 0.0  # compute with fp32 multiplies at the high end of FP32_MUL_ISSUES
    op_boundary_s: float = 0.0  # NPU nodes x the measured per-op boundary overhead
    decoder_cpu_s: float = 0.0  # the clip's decoding on ONNX Runtime's CPU EP, measured here
    log_mel_s: float = 0.0  # the clip's log-mel, measured here
    switch_plan: str = ""  # time-shared array vs split columns vs one xclbin (kernels/designs.py)

    @property
    def rest_s(self) -> float:
        """Session time outside the executor: ONNX Runtime's CPU nodes and the op boundary."""
        return max(0.0, self.session_s - self.executor_host_s - self.device_wall_s)

    @property
    def cpu_ops_s(self) -> float:
        """The partitioned graph's CPU nodes (convolutions, layer norms, residual adds, ...): the rest of
        the session less the op boundary."""
        return max(0.0, self.rest_s - self.op_boundary_s)

    @property
    def device_range_s(self) -> tuple[float, float]:
        """Modelled device time with fp32 multiplies at both ends of their unverified cost."""
        return self.modelled_s, self.modelled_s - self.compute_s + self.compute_high_s

    @property
    def host_s(self) -> float:
        """Host work around the device in one pass, measured here: bf16 packing and copies, CPU nodes,
        op boundary."""
        return self.executor_host_s + self.rest_s

    def as_dict(self) -> dict:
        """``bench --json`` fields of this model (milliseconds; a [low, high] pair where an input is uncertain)."""
        ms = 1e3
        low, high = self.device_range_s

        def span(a: float, b: float) -> list[float] | float:
            return round(a * ms, 2) if abs(a - b) < 5e-6 else [round(a * ms, 2), round(b * ms, 2)]

        return {
            "model": self.model,
            "device_ms": span(low, high),
            "device": {
                "compute_ms": span(self.compute_s, self.compute_high_s),
                "host_device_transfers_ms": round(self.transfer_s * ms, 2),
                "launches_ms": round(self.launch_s * ms, 2),
                "design_switches_ms": round(self.switch_s * ms, 2),
                "runtime_parameters_ms": round(self.runtime_parameters_s * ms, 2),
                "compute_by_kind_ms": {kind: round(sec * ms, 2) for kind, sec in sorted(self.compute_per_kind_s.items())},
            },
            "host_ms": round(self.host_s * ms, 2),
            "host": {
                "bf16_packing_and_copies_ms": round(self.executor_host_s * ms, 2),
                "cpu_ops_ms": round(self.cpu_ops_s * ms, 2),
                "op_boundary_ms": round(self.op_boundary_s * ms, 2),
            },
            "total_ms": span(low + self.host_s, high + self.host_s),
            "switches": self.design_switches,
            "switch_plan": self.switch_plan,
            "launches": self.launches,
            "hw_contexts": self.hw_contexts,
            "clip": {
                "log_mel_ms": round(self.log_mel_s * ms, 2),
                "decoder_cpu_ms": round(self.decoder_cpu_s * ms, 2),
                "transcription_ms": span(
                    self.log_mel_s + low + self.host_s + self.decoder_cpu_s,
                    self.log_mel_s + high + self.host_s + self.decoder_cpu_s,
                ),
            },
            "cpu_encoder_ms": round(self.cpu_encoder_s * ms, 2),
        }


def encoder_input(audio: str = "") -> np.ndarray:
    """(1, 80, 3000) log-mel of a clip padded to one 30-s window, as the pipeline feeds the encoder."""
    from xdna_ep.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim

    path = Path(audio) if audio else Path(__file__).resolve().parent / "data" / "jfk.wav"
    mel = pad_or_trim(log_mel_spectrogram(load_audio(path)), N_FRAMES)
    return np.asarray(mel, dtype=np.float32)[None]


def bench_encoder(
    model_name: str, options: BenchOptions, features: np.ndarray, op_overhead_s: float = 0.0
) -> EncoderBench:
    import onnxruntime as ort

    import xdna_ep
    from xdna_ep.ep import calibration, cost_model
    from xdna_ep.kernels.timing import FP32_MUL_ISSUES
    from xdna_ep.kernels.matmul.spec import MatmulSpec
    from xdna_ep.models.registry import ENCODER_FILE, ensure_model

    folder = ensure_model(model_name)
    path = folder / ENCODER_FILE
    session = xdna_ep.InferenceSession(path, device=options.device, profile=options.profile, precision=options.precision)
    placed = session.report.placed("npu")
    feed = {"input_features": features}
    session.run(None, feed)  # loads the designs and instruction streams
    executor = session.compiled.executor()
    passes = []  # (session seconds, executor stats) of each measured pass; the median one is reported
    for _ in range(options.cpu_repeats):
        executor.statistics.reset()
        start = time.perf_counter()
        session.run(None, feed)
        passes.append((time.perf_counter() - start, executor.stats()))
    session_s, data = sorted(passes, key=lambda item: item[0])[len(passes) // 2]
    totals = data["totals"]
    profile = executor.profile
    dynamic_k_design = MatmulSpec(k=None, profile=profile.name).name
    launch_s = totals["launches"] * profile.launch_s
    switch_s = totals["design_switches"] * profile.design_switch_s
    transfer_s = cost_model.transfer_s(profile, totals["bytes_to_device"] + totals["bytes_from_device"])
    dynamic_k_launches = sum(node["launches"] for node in data["nodes"].values() if node["design"] == dynamic_k_design)
    runtime_parameters_s = dynamic_k_launches * profile.runtime_parameters_s
    per_kind: dict[str, list[float]] = {}
    compute_per_kind: dict[str, float] = {}
    for node in data["nodes"].values():
        per_kind.setdefault(node["kind"], []).append(node["host_s"] / max(1, node["calls"]))
        overhead = (
            node["launches"] * profile.launch_s
            + node["design_switches"] * profile.design_switch_s
            + (node["launches"] * profile.runtime_parameters_s if node["design"] == dynamic_k_design else 0.0)
            + cost_model.transfer_s(profile, node["bytes_to_device"] + node["bytes_from_device"])
        )
        compute_per_kind[node["kind"]] = compute_per_kind.get(node["kind"], 0.0) + node["modelled_device_s"] - overhead
    kinds: dict[str, int] = {}
    for placement in placed:
        kind = placement.kind.split("+")[0].split(".")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cpu.run(None, feed)
    cpu_times = []
    for _ in range(options.cpu_repeats):
        start = time.perf_counter()
        cpu.run(None, feed)
        cpu_times.append(time.perf_counter() - start)
    # the same pass with fp32 multiplies at the high end of their cost: the difference, modelled analytically
    config = json.loads((folder / "whisper_config.json").read_text())
    compute_high_s = compute_s = totals["modelled_device_s"] - launch_s - switch_s - runtime_parameters_s - transfer_s
    if kinds.get("attention"):
        low, high = (
            calibration.encoder_device_ms(
                profile, config["n_audio_state"], config["n_audio_head"], config["n_audio_layer"], fp32_mul_issues=issues
            )
            for issues in FP32_MUL_ISSUES
        )
        compute_high_s += (high - low) / 1e3
    decoder_s, log_mel_s = clip_decoder_cpu_s(model_name, options.audio)
    from xdna_ep.kernels.designs import plan_encoder_switches

    switch_plan = plan_encoder_switches(
        config["n_audio_state"], config["n_audio_head"], config["n_audio_layer"], profile.name, options.precision
    ).reason
    return EncoderBench(
        model=model_name,
        npu_nodes=len(placed),
        node_kinds=kinds,
        launches=totals["launches"],
        design_switches=totals["design_switches"],
        designs=sorted({node["design"] for node in data["nodes"].values()}),
        hw_contexts=len({node["design"] for node in data["nodes"].values()}),
        bytes_to_device=totals["bytes_to_device"],
        bytes_from_device=totals["bytes_from_device"],
        weight_bytes=data["weight_bytes_to_device"],
        modelled_s=totals["modelled_device_s"],
        compute_s=compute_s,
        switch_s=switch_s,
        launch_s=launch_s,
        runtime_parameters_s=runtime_parameters_s,
        transfer_s=transfer_s,
        npu_flops=sum(p.flops for p in placed),
        executor_host_s=totals["host_s"],
        device_wall_s=totals["device_wall_s"],
        session_s=session_s,
        cpu_encoder_s=float(np.median(cpu_times)),
        gemm_designs=session.compiled.gemm_plan.reason,
        host_per_kind_s={kind: float(np.mean(values)) for kind, values in per_kind.items()},
        compute_per_kind_s=compute_per_kind,
        compute_high_s=compute_high_s,
        op_boundary_s=len(placed) * op_overhead_s,
        decoder_cpu_s=decoder_s,
        log_mel_s=log_mel_s,
        switch_plan=switch_plan,
    )


def clip_decoder_cpu_s(model_name: str, audio: str = "") -> tuple[float, float]:
    """(decoder, log-mel) seconds of transcribing the clip on the CPU (greedy, defaults), measured here:
    the decoder runs on ONNX Runtime's CPU EP whatever device the encoder uses."""
    import xdna_ep

    path = Path(audio) if audio else Path(__file__).resolve().parent / "data" / "jfk.wav"
    model = xdna_ep.load_model(model_name, device="cpu")
    xdna_ep.transcribe(path, model)  # warm-up: sessions and arenas
    result = xdna_ep.transcribe(path, model)
    return result.timing["decode"], result.timing["log_mel"]


def format_encoder(result: EncoderBench, options: BenchOptions) -> list[str]:
    from xdna_ep.ep.device import get_profile

    profile = get_profile(options.profile)
    ms = 1e3
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(result.node_kinds.items()))
    low, high = (result.npu_flops / (rate * 1e12) * ms for rate in reversed(PUBLISHED_GEMM_TFLOPS))
    lines = [
        f"{result.model} encoder, one 30-s window, {options.device} {profile.name} {options.precision}:",
        f"  NPU nodes {result.npu_nodes} ({kinds}); launches {result.launches}; design switches "
        f"{result.design_switches}; hardware contexts {result.hw_contexts} of {profile.hw_contexts} "
        f"({', '.join(result.designs)})",
        f"  bytes per pass: {result.bytes_to_device / 1e6:.1f} MB to the device, "
        f"{result.bytes_from_device / 1e6:.1f} MB from it; weights {result.weight_bytes / 1e6:.1f} MB once per session",
        f"  modelled {profile.name} device time: {result.modelled_s * ms:.1f} ms = compute {result.compute_s * ms:.1f} "
        f"+ design switches {result.switch_s * ms:.1f} + launches {result.launch_s * ms:.1f} "
        f"+ runtime parameters {result.runtime_parameters_s * ms:.1f} + transfers {result.transfer_s * ms:.1f}; "
        f"compute by op kind: " + ", ".join(f"{kind} {s * ms:.1f}" for kind, s in sorted(result.compute_per_kind_s.items())),
        f"  GEMM designs: {result.gemm_designs}",
        f"  array sharing between the GEMM and attention designs: {result.switch_plan}",
        f"  the NPU nodes' {result.npu_flops / 1e9:.1f} GFLOP alone at {PUBLISHED_GEMM_TFLOPS[0]}-"
        f"{PUBLISHED_GEMM_TFLOPS[1]} TFLOPS: {low:.1f}-{high:.1f} ms; the bottom-up compute adds padding, "
        f"DMA-bound K steps, the GELU epilogue and the attention's gathers and fp32 exp (bench --calibration)",
    ]
    host = ", ".join(f"{kind} {seconds * ms:.2f} ms" for kind, seconds in sorted(result.host_per_kind_s.items()))
    data = result.as_dict()

    def show(value) -> str:
        return f"{value[0]:.1f}-{value[1]:.1f}" if isinstance(value, list) else f"{value:.1f}"

    lines += [
        f"  compute range: {show(data['device']['compute_ms'])} ms (fp32 vector multiplies at "
        f"{' to '.join(map(str, _fp32_mul_issues()))} bf16 issues each, unverified); device time "
        f"{show(data['device_ms'])} ms",
        f"  host, measured here: {data['host_ms']:.1f} ms = bf16 packing and copies {result.executor_host_s * ms:.1f} "
        f"(per call: {host}) + the partitioned graph's CPU nodes {result.cpu_ops_s * ms:.1f} + op boundary "
        f"{result.op_boundary_s * ms:.1f} ({result.npu_nodes} xdna ops)",
        f"  one encoder pass, device + host: {show(data['total_ms'])} ms; the clip: log-mel "
        f"{result.log_mel_s * ms:.1f} + encoder pass + decoder on the CPU {result.decoder_cpu_s * ms:.1f} = "
        f"{show(data['clip']['transcription_ms'])} ms modelled wall time of the transcription",
    ]
    if options.device == "npu":
        lines.append(f"  measured device wall time (kernel() + wait()): {result.device_wall_s * ms:.1f} ms")
    lines.append(f"  ONNX Runtime CPU encoder, same input, measured here: {result.cpu_encoder_s * ms:.1f} ms")
    if result.model.startswith("tiny"):
        lines.append(f"  for scale: whisper-xdna's tiny encoder measured {WHISPER_XDNA_TINY_MS:.0f} ms on Hawk Point")
    return lines


def _fp32_mul_issues() -> tuple[int, int]:
    from xdna_ep.kernels.timing import FP32_MUL_ISSUES

    return FP32_MUL_ISSUES


def run_bench_json(options: BenchOptions) -> dict:
    """``bench --json``: per model the fields of ``EncoderBench.as_dict``."""
    from xdna_ep.ep.ops import measure_op_overhead

    overhead_s = measure_op_overhead()["xdna_boundary_overhead_us"] * 1e-6
    features = encoder_input(options.audio)
    models = {name: bench_encoder(name, options, features, overhead_s).as_dict() for name in options.models}
    return {"device": options.device, "profile": options.profile, "precision": options.precision, "models": models}


def run_bench(options: BenchOptions) -> list[str]:
    """Run the benchmark; returns the report lines."""
    from xdna_ep.ep.ops import measure_op_overhead

    lines = [f"xdna-ep bench --device {options.device} --profile {options.profile} --precision {options.precision}"]
    overhead = measure_op_overhead()
    lines.append(
        f"per-op host overhead at the Python boundary (1 x 384 row, 384 x 384 weight, reference executor): "
        f"{overhead['xdna_boundary_overhead_us']:.1f} us per xdna op; an ONNX Runtime MatMul node of the same "
        f"shape {overhead['ort_node_us']:.1f} us"
    )
    features = encoder_input(options.audio)
    for model_name in options.models:
        lines += format_encoder(
            bench_encoder(model_name, options, features, overhead["xdna_boundary_overhead_us"] * 1e-6), options
        )
    return lines


def bench_memory(options: BenchOptions, minutes: tuple[float, ...]) -> Iterator[str]:
    """Peak resident memory (RSS, sampled every 5 ms) while transcribing recordings ``minutes`` long:
    the clip (default jfk.wav) repeated with 1.5 s of silence between copies, written to a 16-bit WAV
    and transcribed with the default options by one loaded model, warmed up by one transcription of
    the clip (the device's scratch buffers and ONNX Runtime's arenas are allocated then). The file
    is decoded and its log-mel computed a window at a time (``xdna_ep.audio.WindowedLogMel``), so
    the peak should not grow with the duration. Yields report lines as they are measured.
    """
    import tempfile
    import threading

    import psutil
    import soundfile

    import xdna_ep
    from xdna_ep.audio import SAMPLE_RATE, load_audio

    process = psutil.Process()
    mib = 2**20
    clip = load_audio(Path(options.audio) if options.audio else Path(__file__).resolve().parent / "data" / "jfk.wav")
    period = np.concatenate([clip, np.zeros(int(1.5 * SAMPLE_RATE), np.float32)])
    yield (
        f"xdna-ep bench --memory {','.join(f'{m:g}' for m in minutes)} --device {options.device} --profile "
        f"{options.profile} --precision {options.precision}: peak RSS while transcribing"
    )
    for model_name in options.models:
        model = xdna_ep.load_model(model_name, device=options.device, profile=options.profile, precision=options.precision)
        loaded = process.memory_info().rss
        xdna_ep.transcribe(clip, model)
        warm = process.memory_info().rss
        yield f"{model_name}: {loaded / mib:.0f} MiB resident with the model loaded, {warm / mib:.0f} MiB after one clip"
        for duration in minutes:
            n_samples = int(duration * 60 * SAMPLE_RATE)
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "long.wav"
                with soundfile.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as sound_file:
                    # a minute at a time: the whole recording in memory (691 MB of float32 for 180 min) would
                    # make this process's own peak the harness's, not the transcription's
                    for start in range(0, n_samples, 60 * SAMPLE_RATE):  # np.resize(period, n_samples), in pieces
                        stop = min(n_samples, start + 60 * SAMPLE_RATE)
                        sound_file.write(period[np.arange(start, stop) % period.size])
                before = process.memory_info().rss
                peak, done = [before], threading.Event()

                def sample() -> None:
                    while not done.wait(0.005):
                        peak[0] = max(peak[0], process.memory_info().rss)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                start = time.perf_counter()
                try:
                    result = xdna_ep.transcribe(path, model)
                finally:
                    done.set()
                    sampler.join()
                elapsed = time.perf_counter() - start
                after = process.memory_info().rss
            yield (
                f"  {duration:g} min: peak RSS {peak[0] / mib:.0f} MiB ({(peak[0] - before) / mib:+.0f} MiB during the "
                f"transcription, {(after - before) / mib:+.0f} MiB left after it), {result.stats['windows']} windows, "
                f"{len(result.text.split())} words, {elapsed:.1f} s"
            )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = BenchOptions()
    parser.add_argument(
        "--device", choices=("sim", "npu", "cpu"), default=defaults.device, help="where the xdna ops run (cpu: --memory only)"
    )
    parser.add_argument("--profile", choices=("npu1", "npu2"), default=defaults.profile)
    parser.add_argument("--precision", choices=("bf16", "accurate"), default=defaults.precision)
    parser.add_argument("--model", action="append", help=f"model(s) to bench (default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--audio", default="", help="clip whose log-mel feeds the encoder (default: jfk.wav)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--calibration", action="store_true",
        help="instead: the timing model against published measurements, fitted and held-out points apart",
    )  # fmt: skip
    parser.add_argument(
        "--memory", metavar="MINUTES[,MINUTES...]", type=lambda text: tuple(float(m) for m in text.split(",")),
        help="instead: peak RSS while transcribing recordings this long (the --audio clip repeated), e.g. 1,5,10",
    )


def run_command(args: argparse.Namespace) -> int:
    options = BenchOptions(
        device=args.device, profile=args.profile, precision=args.precision,
        models=tuple(args.model) if args.model else DEFAULT_MODELS, audio=args.audio,
    )  # fmt: skip
    if args.calibration:
        from xdna_ep.ep import calibration

        if args.profile != "npu1":
            raise ValueError("bench --calibration: every published measurement is of npu1; npu2's figures are derived")
        data = calibration.report()
        print(json.dumps(data["points"], indent=1) if args.json else "\n".join(calibration.format_report(data)))
        return 0
    if options.device == "cpu" and not args.memory:
        print("error: bench models an NPU device (sim or npu); --device cpu measures only --memory", file=sys.stderr)
        return 2
    if args.json and not args.memory:
        print(json.dumps(run_bench_json(options), indent=1))
        return 0
    for line in bench_memory(options, args.memory) if args.memory else run_bench(options):
        print(line, flush=True)
    return 0
