"""The per-layer candidate database: every consumer pruned by the method at every level of its ladder.

For each block and consumer (attention, MLP) and each level of :func:`~osscar.lm.allocation.levels.ladder`
the database holds the **method's own solution** of the layer problem at that level: the kept
groups and the consumer's new weights on the kept columns, plus the layer error
(:meth:`~osscar.problem.LayerProblem.calibration_error`: ½‖X(W − Ŵ)‖² and its ratio to ½‖XŴ‖²).
Level ``n`` (all kept) is the dense layer (no solve, error 0); level 0 (the module removed,
:mod:`osscar.lm.removed`) needs no solve either (relative error 1). Every other level is one
``method.prune`` call (``solver_calls`` counts them).

**Inputs: the dense model's** (as ZipLM, EvoPress and DarwinLM build theirs): one calibration
forward through the dense model, both consumers' ``H = XᵀX`` from the same block run, and the next
block gets the dense block's outputs. So a layer's candidates do not depend on the other layers'
choices, and any allocation can be stitched from them (:mod:`osscar.lm.allocation.stitch`).

**On disk** under ``root/<key>/``: ``index.json`` (the :class:`DatabaseSpec`, per part the levels'
errors and solve seconds, build statistics) and one ``<block>.<part>.safetensors`` per finished
part (tensors ``kept.<level>: (k,)`` long and ``W.<level>: (m, k·group_size)``). The key hashes the
spec: model (config and a weight fingerprint), calibration tokens, method and its parameters,
damping, levels, attention unit and inputs; a database built with any of them different lives
in another folder and is never reused. Each part is written (file, then index, both atomically)
as soon as it is solved, so a killed build continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from osscar.io import atomic_write_json
from osscar.lm.adapters import ModelAdapter, get_adapter
from osscar.lm.allocation.levels import PARTS, ladder
from osscar.lm.calibrate.capture import HessianAccumulator, capture_inputs, run_block, with_block_kwargs
from osscar.lm.evaluation.latency import config_hash
from osscar.method import PruningMethod
from osscar.problem import LayerProblem

INPUTS = "dense"  # the calibration inputs every layer problem is built from (module docstring)
INDEX = "index.json"
FINGERPRINT_SAMPLES = 4096  # values per tensor hashed into the model fingerprint


def data_fingerprint(segments: Tensor) -> str:
    """sha256 of the calibration token ids (shape and values)."""
    ids = segments.detach().to("cpu", torch.int64).contiguous()
    return hashlib.sha256(json.dumps(list(ids.shape)).encode() + ids.numpy().tobytes()).hexdigest()[:20]


def model_fingerprint(model: nn.Module, attention_unit: str | None = None) -> str:
    """sha256 of the config hash (with the requested ``attention_unit``) and, per parameter, its name, shape, dtype and up to
    :data:`FINGERPRINT_SAMPLES` evenly strided values (a sample: any real change of the weights
    shows, a fine-tune touching only unsampled entries would not)."""
    h = hashlib.sha256(config_hash(model.config, attention_unit).encode())
    for name, p in model.state_dict().items():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(flat[::step].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class DatabaseSpec:
    """Everything a candidate depends on; :meth:`key` names the database folder."""

    model: str
    model_type: str
    data: str
    method: str
    params: str  # the method's parameters, JSON with sorted keys
    damping: float
    attn_levels: tuple[int, ...]
    mlp_levels: tuple[int, ...]
    attention_unit: str
    n_blocks: int
    inputs: str = INPUTS

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "attn_levels": list(self.attn_levels), "mlp_levels": list(self.mlp_levels)}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:20]

    def levels(self, part: str) -> tuple[int, ...]:
        return self.attn_levels if part == "attn" else self.mlp_levels


def make_spec(model: nn.Module, segments: Tensor, method: PruningMethod, mlp_steps: int = 8,
              damping: float = 0.01, adapter: ModelAdapter | None = None) -> DatabaseSpec:
    """The spec of the database of ``model`` pruned by ``method`` on ``segments: (n, seqlen)``; ``adapter``: the
    run's (it holds the attention unit; None: ``get_adapter(model)``, kv-group)."""
    adapter = adapter or get_adapter(model)
    levels = ladder(adapter, mlp_steps)
    return DatabaseSpec(model=model_fingerprint(model, adapter.requested_unit), model_type=model.config.model_type,
                        data=data_fingerprint(segments), method=method.name,
                        params=json.dumps(method.params(), sort_keys=True, default=str), damping=float(damping),
                        attn_levels=tuple(levels["attn"]), mlp_levels=tuple(levels["mlp"]),
                        attention_unit=adapter.attention_unit, n_blocks=len(adapter.layers(model)))


@dataclass
class BuildReport:
    """What one :func:`build_database` call did (``solver_calls`` 0: everything was on disk)."""

    key: str
    path: str
    solver_calls: int = 0
    parts_solved: int = 0
    parts_reused: int = 0
    seconds: float = 0.0
    size_bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class CandidateDatabase:
    """One database folder (module docstring). Open it with :meth:`open`."""

    def __init__(self, path: Path, spec: DatabaseSpec, index: dict[str, Any]) -> None:
        self.path, self.spec, self.index = path, spec, index
        self._cache: dict[str, dict[str, Tensor]] = {}

    @classmethod
    def open(cls, root: str | os.PathLike, spec: DatabaseSpec, create: bool = True) -> CandidateDatabase:
        """The database of ``spec`` under ``root`` (created empty if absent and ``create``).

        ValueError if the folder's index is unreadable or was written for another spec."""
        path = Path(root) / spec.key()
        index_path = path / INDEX
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"candidate database {path}: {INDEX} is unreadable ({e}); delete the folder to "
                                 "rebuild it") from None
            if index.get("spec") != spec.to_dict():
                raise ValueError(f"candidate database {path} was built for another model, data, method or levels "
                                 f"(its spec: {index.get('spec')}); delete the folder to rebuild it, or use "
                                 "another --cache-dir")
            return cls(path, spec, index)
        if not create:
            raise ValueError(f"no candidate database at {path}")
        index = {"spec": spec.to_dict(), "key": spec.key(), "parts": {}, "stats": {"solver_calls": 0, "seconds": 0.0}}
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(index_path, index)
        return cls(path, spec, index)

    # -- reading ---------------------------------------------------------------------------
    def done(self, block: int, part: str) -> bool:
        return f"{block}.{part}" in self.index["parts"]

    def complete(self) -> bool:
        return all(self.done(i, part) for i in range(self.spec.n_blocks) for part in PARTS)

    def errors(self, block: int, part: str, relative: bool = True) -> dict[int, float]:
        """{level: layer error} of one part (relative: over the dense output energy, in [0, 1])."""
        levels = self.index["parts"][f"{block}.{part}"]["levels"]
        return {int(k): float(v["rel_error" if relative else "error"]) for k, v in levels.items()}

    def candidate(self, block: int, part: str, level: int) -> tuple[Tensor, Tensor] | None:
        """(kept groups (k,), consumer weights on the kept columns (m, k·group_size)); None for the
        dense level and level 0 (nothing stored: all kept, or the module removed)."""
        if level not in self.spec.levels(part):
            raise ValueError(f"block {block} {part}: level {level} is not in the database's ladder "
                             f"{list(self.spec.levels(part))}")
        if level == 0 or level == self.spec.levels(part)[-1]:
            return None
        name = f"{block}.{part}"
        if name not in self._cache:
            from safetensors.torch import load_file

            self._cache[name] = load_file(str(self.path / self.index["parts"][name]["file"]))
        tensors = self._cache[name]
        return tensors[f"kept.{level}"], tensors[f"W.{level}"]

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    # -- writing ---------------------------------------------------------------------------
    def record(self, block: int, part: str, levels: dict[int, dict[str, float]], tensors: dict[str, Tensor],
               solver_calls: int, seconds: float) -> None:
        """Store one finished part: its tensors file, then the index (each atomic)."""
        from safetensors.torch import save_file

        name = f"{block}.{part}"
        file = f"{name}.safetensors"
        tmp = self.path / f".{file}.tmp{os.getpid()}"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, self.path / file)
        self.index["parts"][name] = {"file": file, "levels": {str(k): v for k, v in levels.items()}}
        stats = self.index["stats"]
        stats["solver_calls"] += solver_calls
        stats["seconds"] += seconds
        atomic_write_json(self.path / INDEX, self.index)


def solve_part(problem_at: Callable[[int], LayerProblem], method: PruningMethod, levels: tuple[int, ...],
               dtype: torch.dtype = torch.float32) -> tuple[dict[int, dict[str, float]], dict[str, Tensor], int]:
    """The method at every level of one consumer: ({level: errors, seconds}, tensors, solver calls).

    ``problem_at(k)``: the layer problem keeping k groups (the same H for every k); the weights are
    stored in ``dtype`` (the consumer's). The levels between 0 and all come from
    :meth:`~osscar.method.PruningMethod.prune_ladder` (one pass for a method with a removal path, e.g.
    ZipLM; one solve per level otherwise); ``solver calls`` counts the levels solved."""
    full = levels[-1]
    dense = problem_at(full)
    zero_err, zero_rel = dense.calibration_error(torch.zeros_like(dense.W_dense))
    out: dict[int, dict[str, float]] = {full: {"error": 0.0, "rel_error": 0.0, "seconds": 0.0}}
    if 0 in levels:
        out[0] = {"error": zero_err, "rel_error": zero_rel, "seconds": 0.0}
    tensors: dict[str, Tensor] = {}
    solved = method.prune_ladder(problem_at, [k for k in levels if k not in (0, full)])
    for level, res in solved.items():  # the error and the rows depend on H, Ŵ and the groups, not on k
        err, rel = dense.calibration_error(res.W)
        out[level] = {"error": err, "rel_error": rel, "seconds": res.seconds}
        cols = dense.rows_of(res.kept.to(dense.device))
        tensors[f"kept.{level}"] = res.kept.clone()
        tensors[f"W.{level}"] = res.W[cols].T.to("cpu", dtype).contiguous()  # (m, k·group_size)
    return {k: out[k] for k in levels}, tensors, len(solved)


@torch.no_grad()
def build_database(model: nn.Module, segments: Tensor, method: PruningMethod, root: str | os.PathLike,
                   mlp_steps: int = 8, damping: float = 0.01, batch_size: int = 8,
                   progress: Callable[[str], None] | None = None, adapter: ModelAdapter | None = None,
                   ) -> tuple[CandidateDatabase, BuildReport]:
    """Build (or finish, or just open) the candidate database of the *dense* ``model`` under ``root``.

    ``segments: (n, seqlen)`` calibration token ids. One dense forward, block by block (module
    docstring); parts already on disk are not solved again, and blocks after the last missing
    part are not run. ``progress`` is called after each part is stored. ``adapter``: the run's (:func:`make_spec`).
    Returns the database and a :class:`BuildReport` (solver calls, seconds, size on disk).
    """
    start = time.perf_counter()
    adapter = adapter or get_adapter(model)
    spec = make_spec(model, segments, method, mlp_steps, damping, adapter)
    db = CandidateDatabase.open(root, spec)
    report = BuildReport(key=spec.key(), path=str(db.path))
    todo = [i for i in range(spec.n_blocks) if not all(db.done(i, part) for part in PARTS)]
    report.parts_reused = 2 * spec.n_blocks - sum(not db.done(i, part) for i in todo for part in PARTS)
    if todo:
        inputs, per_layer = capture_inputs(model, adapter, segments, batch_size)
        for i, layer in enumerate(adapter.layers(model)[:todo[-1] + 1]):
            inputs = with_block_kwargs(inputs, per_layer, i)
            if i not in todo:
                inputs = run_block(layer, inputs)
                continue
            accs = {part: HessianAccumulator(adapter.consumer(layer, part)) for part in PARTS}
            try:
                outputs = run_block(layer, inputs)
            finally:
                Hs = {part: acc.remove() for part, acc in accs.items()}
            for part in PARTS:
                if not db.done(i, part):
                    report.solver_calls += _build_part(db, adapter, layer, i, part, Hs[part], method, damping)
                    report.parts_solved += 1
                    if progress is not None:
                        progress(f"database {spec.key()}: block {i} {part} stored")
            del Hs
            inputs = outputs
    report.seconds = time.perf_counter() - start
    report.size_bytes = db.size_bytes()
    report.info = {"inputs": INPUTS, "solver_calls_total": db.index["stats"]["solver_calls"],
                   "solve_seconds_total": db.index["stats"]["seconds"]}
    return db, report


def _build_part(db: CandidateDatabase, adapter: Any, layer: nn.Module, block: int, part: str, H: Tensor,
                method: PruningMethod, damping: float) -> int:
    """Solve and store one consumer's ladder from its dense ``H: (p, p)``; returns the solver calls."""
    t0 = time.perf_counter()
    consumer = adapter.consumer(layer, part)
    name = f"{adapter.layers_path}.{block}.{adapter.attn_consumer if part == 'attn' else adapter.mlp_consumer}"

    def problem_at(k: int) -> LayerProblem:
        return LayerProblem.from_calibration(H, consumer.weight.data.T, adapter.group_size(part), k, damping=damping,
                                             name=name, blocks=adapter.blocks(part))

    levels, tensors, calls = solve_part(problem_at, method, db.spec.levels(part), consumer.weight.dtype)
    db.record(block, part, levels, tensors, calls, time.perf_counter() - t0)
    return calls
