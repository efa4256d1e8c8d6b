"""The allowed values of every command-line option, importable without torch.

The CLIs parse their arguments from these names alone, so ``--help`` and argument errors answer
without loading a model library; the modules that implement each choice import their names
from here (tests check that both lists agree).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping

MODEL_DTYPES = ("float32", "float16", "bfloat16")
CALIBRATION_INPUTS = ("pruned", "dense")  # where each LM block's H comes from
CORPUS_NAMES = ("c4", "c4-train", "ptb", "wiki-gensim", "wikitext2")
ZERO_SHOT_TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "boolq", "lambada_openai")
EMBEDDED_LM_NAMES = ("smollm2-135m",)
ALLOCATIONS = ("uniform", "uniform-latency", "runtime", "spdy", "evolutionary")
ALLOCATION_APPLY = ("sequential", "database")  # a global search's widths: re-solved, or its database's weights
OFFLOAD_MODES = ("none", "cpu", "disk")  # LM runs: where blocks wait while not computed (osscar.lm.offloading.offload)
ATTENTION_UNITS = ("head", "kv-group")  # GQA: query heads uniform per KV group, or whole KV groups
VISION_DATASETS = ("fashion-mnist", "cifar10", "imagenet")
DEFAULT_FMNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # where the Debian package puts the IDX files
FMNIST_PACKAGE = "dataset-fashion-mnist"
FMNIST_INSTALL = f"apt-get update && apt-get install -y {FMNIST_PACKAGE}"  # as root (noxfile.py runs it when it can)
VISION_ARCHS = ("resnet20", "mobilenetv1", "resnet50")
DEFAULT_DAMPING = 1e-2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` once: not when the help text already states its default, nor for
    flags (switches) and options whose default is "not given"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        not_given = any(action.default is v for v in (None, False, argparse.SUPPRESS)) or action.default in ([], "")
        if "(default" in text.lower() or action.nargs == 0 or not_given:  # `is`: a default of 0 is printed
            return text
        return super()._get_help_string(action)


def as_flags(message: str, flags: Mapping[str, str], keep: Iterable[str] = ()) -> str:
    """``message`` with config field names (``head_fraction``) replaced by the flags a user typed.

    A field name inside a path is left alone (``/no/such/model`` stays, ``model.gguf`` stays): one
    preceded by a path character (``/ \\ . ~``) or followed by a separator or ``.name``. The strings in
    ``keep`` (the user's own argument values) are never rewritten where they stand as whole words.
    """
    kept = sorted({k for k in keep if k}, key=len, reverse=True)
    alternatives = "|".join(map(re.escape, kept))
    parts = re.split(rf"(?<![\w-])({alternatives})(?![\w-])", message) if kept else [message]
    for field, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        pattern = re.compile(rf"(?<![\w\-/\\.~]){re.escape(field)}(?![\w\-/\\]|\.\w)")
        parts = [p if i % 2 else pattern.sub(flag, p) for i, p in enumerate(parts)]
    return "".join(parts)


def parser_flags(parser: argparse.ArgumentParser, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """{dest: '--long-flag'} for every option of ``parser`` (plus config-field aliases in ``extra``)."""
    out = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings and a.dest != "help"}
    out.update(extra or {})
    return out
