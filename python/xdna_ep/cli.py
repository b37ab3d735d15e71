"""The ``xdna-ep`` command line.

Each subcommand lives in the module of its concept, which provides ``configure_parser(parser)`` and
``run_command(args) -> int``; this file only lists them, so the modules are imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from xdna_ep import __version__
from xdna_ep.errors import XdnaError

# subcommand -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "transcribe": ("xdna_ep.transcribe", "transcribe audio files"),
    "models": ("xdna_ep.models.cli", "export and list Whisper ONNX models"),
    "bench-transcribe": ("xdna_ep.bench_transcribe", "time transcription against faster-whisper on the same weights"),
    "bench-agreement": ("xdna_ep.bench_agreement", "beam search and word timestamps against faster-whisper"),
    "inspect": ("xdna_ep.inspect_model", "show the fused nodes of a model, their placement and why"),
    "serve": ("xdna_ep.server", "HTTP transcription server (OpenAI audio API, whisper.cpp /inference)"),
    "bench-longform": ("xdna_ep.bench_longform", "VAD on a recording with long gaps; batched vs sequential vs faster-whisper"),
    "bench-serve": ("xdna_ep.serve_bench", "load the HTTP server with concurrent clients; check every answer"),
    "bench": ("xdna_ep.bench", "modelled NPU time of a 30-s encoder pass per model, and where it goes"),
    "designs": ("xdna_ep.designs", "NPU designs: check them against the hardware limits, time their simulation"),
    "conformance": ("xdna_ep.conformance", "run ONNX's backend node tests (MatMul, Gemm, Softmax, Attention) through xdna-ep"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (and its options added), so start-up stays fast."""
    parser = argparse.ArgumentParser(
        prog="xdna-ep", description="Whisper speech-to-text on ONNX Runtime, its matrix work on the AMD XDNA NPU"
    )
    parser.add_argument("--version", action="version", version=f"xdna-ep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.configure_parser(sub_parser)
            sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(args._module.run_command(args) or 0)
    except (XdnaError, ValueError) as error:  # ValueError: an option dataclass refused a value
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
