"""Transcribe audio files with xdna-ep's Python API.

    python examples/transcribe.py [FILE ...] [--model tiny.en] [--device cpu] [--language auto] [--vad] [--batch-size N]

Without FILE it transcribes the bundled sample (jfk.wav).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import xdna_ep
from xdna_ep.errors import XdnaError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="audio files (default: the bundled jfk.wav)")
    parser.add_argument("--model", default="tiny.en", help="model name or exported model folder")
    parser.add_argument("--device", default="cpu", choices=("cpu", "sim", "npu", "auto"))
    parser.add_argument("--language", default="auto", help="code, English name, or auto (detect)")
    parser.add_argument("--vad", action="store_true", help="decode only what Silero VAD calls speech")
    parser.add_argument("--batch-size", type=int, help="decode N VAD chunks at once")
    args = parser.parse_args()

    files = args.files or [Path(xdna_ep.__file__).parent / "data" / "jfk.wav"]
    try:
        model = xdna_ep.load_model(args.model, device=args.device)  # loaded once for every file
        options = {"language": args.language, "vad": args.vad, "batch_size": args.batch_size}
        for file in files:
            result = xdna_ep.transcribe(file, model, **options)  # any TranscribeOptions/DecodingOptions field
            print(f"==> {file} ({result.language}) <==")
            for segment in result.segments:
                print(f"[{segment.start:6.2f} -> {segment.end:6.2f}] {segment.text.strip()}")
            print(f"{result.duration:.1f} s of audio in {result.timing['total']:.2f} s")
    except (XdnaError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
