"""``xdna-ep models export|list``: build Whisper ONNX models from real weights and show what is there."""

from __future__ import annotations

import argparse
from pathlib import Path

from xdna_ep.errors import ModelError
from xdna_ep.models import registry
from xdna_ep.models.export import EXPORTERS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    export = sub.add_parser("export", help="export a Whisper model to ONNX into the model cache")
    export.add_argument("name", help=f"model name ({', '.join(registry.PACKAGED)}, or a new name with --from)")
    export.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="a local CTranslate2 (model.bin) or Hugging Face Whisper folder instead of the packaged weights",
    )
    export.add_argument("--force", action="store_true", help="export again even if the model is in the cache")
    export.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="onnx",
        help="onnx: build the graphs directly (no PyTorch; default); optimum: through PyTorch, needs the export extra",
    )
    sub.add_parser("list", help="list exported models and the ones that can be exported")


def run_command(args: argparse.Namespace) -> int:
    if args.models_command == "export":
        from xdna_ep.models.export import export_model

        folder = export_model(args.name, source=args.source, force=args.force, exporter=args.exporter)
        config = registry.read_config(folder)
        print(f"{args.name}: {folder} ({config['export']['exporter']} exporter, {config['export']['seconds']} s)")
        print(f"  outputs finite on {config['check']['audio']}")
        validation = config.get("validation") or {}
        if validation:
            print(f"  checked against PyTorch on {validation['audio']}: " + ", ".join(
                f"{key} {value:.1e}" for key, value in validation.items() if key.endswith("diff")
            ) + f" (atol {validation['atol']}, rtol {validation['rtol']})")
        return 0
    return _list_models()


def _list_models() -> int:
    root = registry.models_dir()
    exported = sorted(p for p in root.glob("*") if registry.is_current(p)) if root.is_dir() else []
    print(f"model cache: {root}  (set {registry.HOME_ENV} to move it)")
    print(f"{'name':<12} {'status':<10} {'layers':<7} {'width':<6} {'vocab':<6} source")
    names = {p.name for p in exported}
    for folder in exported:
        config = registry.read_config(folder)
        print(
            f"{folder.name:<12} {'exported':<10} {config['n_audio_layer']:<7} {config['n_audio_state']:<6} "
            f"{config['n_vocab']:<6} {config.get('source', '?')}"
        )
    for name, packaged in registry.PACKAGED.items():
        if name in names:
            continue
        try:
            packaged.weight_files()
            status = "available"
        except ModelError:  # the package that carries the weights is not installed
            status = "not installed"
        print(f"{name:<12} {status:<10} {'':<7} {'':<6} {'':<6} package {' + '.join(packaged.pip_names)}")
    return 0
