"""The pipelines a sweep can run, by name: where each one's config class and run function live.

Imports are lazy so that listing pipelines or validating a sweep never loads a model library
it does not need.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from collections.abc import Callable


@dataclass(frozen=True)
class Pipeline:
    """A runnable pipeline: ``config`` and ``run`` are 'module:attribute' paths.

    ``check``: a 'module:function' run on each config while a sweep is validated, for the checks that read
    files (a model's config) and so are not in the config's ``__post_init__``; None: none.
    ``progress``: a 'module:function' turning ``say(text)`` into the run function's keyword arguments that
    report its long steps (a sweep prints them under the run's progress line); None: the run says nothing.
    ``volatile`` names config fields that do not change results (output folders, progress),
    left out of a run's key. ``added`` maps fields added after records existed to the value that
    reproduces the earlier behaviour: at that value a field is left out of the key too, so the
    records of unchanged runs keep their keys (any other value is part of the key).
    """

    name: str
    config: str
    run: str
    volatile: tuple[str, ...] = ()
    added: tuple[tuple[str, Any], ...] = ()
    check: str | None = None
    progress: str | None = None  # 'module:function': say(text) -> the run function's keyword arguments that report steps

    def key_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The fields of ``config`` (a dataclass as dict) that identify a run."""
        neutral = dict(self.added)
        return {k: v for k, v in config.items()
                if k not in self.volatile and not (k in neutral and v == neutral[k])}

    def _load(self, path: str) -> Any:
        module, attr = path.split(":")
        return getattr(importlib.import_module(module), attr)

    def config_class(self) -> type:
        return self._load(self.config)

    def run_function(self) -> Callable[..., dict[str, Any]]:
        return self._load(self.run)

    def check_function(self) -> Callable[[Any], None] | None:
        return self._load(self.check) if self.check else None

    def progress_kwargs(self, say: Callable[[str], None]) -> dict[str, Any]:
        """Keyword arguments of the run function that make it call ``say(text)`` at each long step ({}: none)."""
        return self._load(self.progress)(say) if self.progress else {}


PIPELINES = MappingProxyType({
    "lm": Pipeline("lm", "osscar.lm.run_config:LMRunConfig", "osscar.lm.run:run_lm",
                   volatile=("output_dir", "save_model", "cache_dir", "max_device_memory"),
                   added=(("device", "cpu"), ("dtype", "float32"), ("calibration_inputs", "pruned"),
                          ("attention_unit", "kv-group"), ("heldout_samples", 4), ("heldout_seqlen", None),
                          ("offload", "none"), ("allocation_params", {}), ("drift", False),
                          ("allocation_apply", "sequential")),
                   check="osscar.lm.run_config:check_model", progress="osscar.lm.run_state:step_events"),
    "vision": Pipeline("vision", "osscar.vision.run_config:VisionRunConfig", "osscar.vision.pipeline:run_vision",
                       volatile=("output_dir", "save_model"),
                       added=(("device", "cpu"), ("chip_full_maps", None)),
                       check="osscar.vision.pipeline:check_weights"),
    "solver": Pipeline("solver", "benchmarks.solver_pipeline:SolverRunConfig", "benchmarks.solver_pipeline:run_solver",
                       added=(("device", "cpu"),)),
})


def get_pipeline(name: str) -> Pipeline:
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; allowed: {', '.join(PIPELINES)}")
    return PIPELINES[name]
