"""Command-line entry point: ``python -m osscar {lm,vision} ...`` (or the ``osscar`` script)."""

from __future__ import annotations

import argparse
import importlib
import sys

PIPELINES = {
    "lm": ("osscar.lm.cli",
           "Prune a Hugging Face causal LM (OPT, Llama/GQA); default: the embedded SmolLM2-135M-Instruct (Q4_1 GGUF)."),
    "vision": ("osscar.vision.cli", "Prune a CNN (ResNet20, MobileNetV1, ResNet50); default: embedded ResNet20."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="osscar",
        description="One-shot structured pruning with OSSCAR and its baselines.",
        epilog="Run 'osscar PIPELINE --help' for the options of one pipeline.",
    )
    parser.add_argument("pipeline", choices=sorted(PIPELINES), help="; ".join(f"{k}: {v[1]}" for k, v in PIPELINES.items()))
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in PIPELINES:
        parser.parse_args(argv[:1] or ["--help"])
    module = importlib.import_module(PIPELINES[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
