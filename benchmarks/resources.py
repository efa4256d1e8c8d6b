"""What one run asks of a cluster, from its sweep profile's ``[profiles.NAME.resources]`` table
and per-pipeline defaults (CPUs = the run's threads; one GPU for a run on ``cuda``)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Resources:
    """What one run asks of a cluster. ``memory_gb`` None: no memory request."""

    cpus: int = 1
    gpus: int = 0
    memory_gb: float | None = None
    time_min: int = 240
    partition: str | None = None

    def __post_init__(self) -> None:
        for name in ("cpus", "time_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"resources.{name} must be an integer ≥ 1, got {v!r}")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise ValueError(f"resources.gpus must be an integer ≥ 0, got {self.gpus!r}")
        if self.memory_gb is not None and not (isinstance(self.memory_gb, (int, float)) and self.memory_gb > 0):
            raise ValueError(f"resources.memory_gb must be a number > 0, got {self.memory_gb!r}")
        if self.partition is not None and not isinstance(self.partition, str):
            raise ValueError(f"resources.partition must be a string, got {self.partition!r}")


RESOURCE_KEYS = tuple(f.name for f in fields(Resources))


def resources_for(spec: Any, declared: dict[str, Any] | None = None) -> Resources:
    """The profile's ``[resources]`` over per-pipeline defaults: CPUs = the run's threads, one GPU
    for a run on ``cuda``."""
    threads = getattr(spec.config, "threads", 1) or 1
    device = str(getattr(spec.config, "device", "cpu"))
    default = Resources(cpus=int(threads), gpus=1 if device.startswith("cuda") else 0)
    return replace(default, **(declared or {}))


