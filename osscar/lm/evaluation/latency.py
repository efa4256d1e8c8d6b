"""Measured per-layer latency tables for runtime-aware allocation (ZipLM's idea).

:func:`latency_table` times, on the current device at one (batch, seqlen) prefill shape:

* **attention part** of one decoder block as a function of kept attention groups (heads for OPT,
  whole KV groups for Llama/GQA) — every level 1..n by default;
* **MLP part** as a function of kept FFN width — ``mlp_levels`` evenly spaced widths (16 by
  default, always including the full width), linearly interpolated in between;
* the **fixed, unprunable part**: embeddings, final norm and LM head (``fixed_model_s``) plus,
  per block, what lies outside the two prunable parts (norms, residual adds: ``block_rest_s``).

How: a one-block copy of the model is built from the model's own config (``num_hidden_layers=1``,
random weights — latency does not depend on the values), its block inputs are captured once, and
for every level a copy of the block is sliced with the adapter (the same code that slices pruned
models) and run ``warmup + repeats`` times, in :data:`ROUNDS` rounds over all levels (a level's time is the
median over rounds: a burst of other load during one level's measurement cannot make it an outlier, as a
single round let the dense MLP width of SmolLM2 time 40% above the next width down). Forward hooks time
the attention module (pre/post hooks on ``self_attn``) and the MLP (pre-hook on the first MLP producer, post-hook on the MLP
consumer) inside each block forward; on CUDA every timestamp synchronises. Medians are stored.
The thread count is fixed (``torch.set_num_threads(threads)`` for the measurement, restored
after) and recorded.

Tables are cached as JSON (atomic write) under ``cache_root(cache_dir)/latency`` (``$OSSCAR_CACHE``
or ``~/.cache/osscar``), keyed by (model config hash, device, torch version, threads, batch,
seqlen) and the grid settings; a cached table is reused only when its key matches exactly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from osscar.devices import check_model_dtype, device_label, model_device, resolve_device
from osscar.io import atomic_write_json
from osscar.lm.adapters import _get, get_adapter
from osscar.lm.slicing import slice_shapes

ROUNDS = 3  # sweeps over all levels; a level's time is the median over rounds (a burst of load hits one round)
_IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "osscar_pruned", "_commit_hash", "architectures",
                        "torch_dtype", "dtype", "_attn_implementation_autoset"}


def config_hash(config: Any, attention_unit: str | None = None) -> str:
    """Stable hash of the architecture-relevant config entries (names and versions ignored) and of the requested
    attention unit, if any (under the key ``osscar_attention_unit``, where the config carried it before the unit
    moved into the adapter: the cache keys of earlier runs stay valid)."""
    d = {k: v for k, v in config.to_dict().items() if k not in _IGNORED_CONFIG_KEYS}
    if attention_unit is not None:
        d["osscar_attention_unit"] = attention_unit
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_levels(n: int, count: int) -> list[int]:
    """``count`` evenly spaced levels in [1, n] (n included), deduplicated, ascending."""
    if n <= count:
        return list(range(1, n + 1))
    return sorted({max(1, round(n * (i + 1) / count)) for i in range(count)})


def _interp(table: dict[int, float], k: float) -> float:
    if k in table:
        return float(table[k])
    sizes = sorted(table)
    if k <= sizes[0]:  # below the grid: proportional to the width, through the smallest point
        return float(table[sizes[0]]) * k / sizes[0]
    if k >= sizes[-1]:
        return float(table[sizes[-1]])
    hi = next(s for s in sizes if s > k)
    lo = max(s for s in sizes if s < k)
    t = (k - lo) / (hi - lo)
    return float(table[lo]) * (1 - t) + float(table[hi]) * t


@dataclass
class LatencyTable:
    """Median seconds per prefill pass at (batch, seqlen). ``attn``/``mlp``: {kept: seconds} per block."""

    key: dict[str, Any]
    attn: dict[int, float]
    mlp: dict[int, float]
    block_rest_s: float
    fixed_model_s: float
    n_layers: int
    n_attn_groups: int
    ffn_dim: int
    info: dict[str, Any] = field(default_factory=dict)

    def attn_latency(self, kept: float) -> float:
        return _interp(self.attn, kept)

    def mlp_latency(self, kept: float) -> float:
        return _interp(self.mlp, kept)

    def fixed_s(self, n_blocks: int | None = None) -> float:
        """Unprunable time: embeddings/norm/LM head plus the non-prunable rest of every block."""
        return self.fixed_model_s + (self.n_layers if n_blocks is None else n_blocks) * self.block_rest_s

    def predict(self, attn_levels: list[int], mlp_levels: list[int]) -> float:
        """Predicted whole-model prefill seconds with these per-block widths (one entry per block)."""
        if len(attn_levels) != self.n_layers or len(mlp_levels) != self.n_layers:
            raise ValueError(f"need one level per block ({self.n_layers}), got {len(attn_levels)} and {len(mlp_levels)}")
        return self.fixed_s() + sum(self.attn_latency(a) + self.mlp_latency(m) for a, m in zip(attn_levels, mlp_levels))

    def dense_s(self) -> float:
        return self.predict([self.n_attn_groups] * self.n_layers, [self.ffn_dim] * self.n_layers)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "attn": {str(k): v for k, v in self.attn.items()},
                "mlp": {str(k): v for k, v in self.mlp.items()}, "block_rest_s": self.block_rest_s,
                "fixed_model_s": self.fixed_model_s, "n_layers": self.n_layers,
                "n_attn_groups": self.n_attn_groups, "ffn_dim": self.ffn_dim, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        return cls(key=d["key"], attn={int(k): float(v) for k, v in d["attn"].items()},
                   mlp={int(k): float(v) for k, v in d["mlp"].items()}, block_rest_s=float(d["block_rest_s"]),
                   fixed_model_s=float(d["fixed_model_s"]), n_layers=int(d["n_layers"]),
                   n_attn_groups=int(d["n_attn_groups"]), ffn_dim=int(d["ffn_dim"]), info=d.get("info", {}))


class _Stopwatch:
    """Pre/post forward hooks that record the wall time between a start and an end module."""

    def __init__(self, start: nn.Module, end: nn.Module, sync: bool) -> None:
        self.sync, self.t0, self.times = sync, 0.0, []
        self.handles = [start.register_forward_pre_hook(self._start), end.register_forward_hook(self._stop)]

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _start(self, *_: Any) -> None:
        self.t0 = self._now()

    def _stop(self, *_: Any) -> None:
        self.times.append(self._now() - self.t0)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _one_block_model(config: Any, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = 1
    for attr in ("osscar_pruned", "osscar_num_attention_heads"):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        cfg.layer_types = list(cfg.layer_types)[:1]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()


def _monotone(t: dict[int, float]) -> dict[int, float]:
    """Timing noise aside, a narrower part is never slower: t[k] ← min(t[k'] for k' ≥ k)."""
    out, best = {}, float("inf")
    for k in sorted(t, reverse=True):
        best = min(best, t[k])
        out[k] = best
    return dict(sorted(out.items()))


class _Caught(Exception):
    pass


def _capture(model: nn.Module, block: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Block 0's input hidden states (batch, seqlen, d) and keyword arguments for ``ids``."""
    box: dict[str, Any] = {}

    def catcher(module: nn.Module, args: tuple, kwargs: dict) -> None:
        box["x"] = (args[0] if args else kwargs.pop("hidden_states")).detach()
        box["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Caught

    handle = block.register_forward_pre_hook(catcher, with_kwargs=True)
    try:
        model(ids, use_cache=False)
    except _Caught:
        pass
    finally:
        handle.remove()
    kwargs = box["kwargs"]
    for k in ("cache", "past_key_values", "past_key_value"):
        if k in kwargs:
            kwargs[k] = None
    kwargs["use_cache"] = False
    return box["x"], kwargs


def _path(cache_dir: str | os.PathLike | None, key: dict[str, Any]) -> Path:
    from osscar.lm.sources.models import cache_root

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root(cache_dir) / "latency" / f"{key['config_hash']}-b{key['batch']}-s{key['seqlen']}-{digest}.json"


def _read_cached(path: Path, key: dict[str, Any]) -> LatencyTable | None:
    """The cached table of ``key`` at ``path``, or None (missing, of another key, or corrupt: re-measured)."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except ValueError:
        return None
    if d.get("key") != key:
        return None
    try:
        table = LatencyTable.from_dict(d)
    except (ValueError, KeyError):
        return None
    table.info.update({"cached": True, "path": str(path)})
    return table


def _time_block(ad: Any, layer: nn.Module, x: Tensor, kwargs: dict[str, Any], warmup: int, repeats: int,
                sync: bool) -> tuple[float, float, float]:
    """Median seconds of (attention, MLP, whole block) over ``repeats`` forwards of ``layer`` after ``warmup``."""
    sw_attn = _Stopwatch(_get(layer, ad.attn_module), _get(layer, ad.attn_module), sync)
    sw_mlp = _Stopwatch(_get(layer, ad.mlp_producers[0]), ad.consumer(layer, "mlp"), sync)
    sw_block = _Stopwatch(layer, layer, sync)
    try:
        for _ in range(warmup):
            layer(x, **kwargs)
        sw_attn.times.clear(), sw_mlp.times.clear(), sw_block.times.clear()
        for _ in range(repeats):
            layer(x, **kwargs)
    finally:
        for sw in (sw_attn, sw_mlp, sw_block):
            sw.remove()
    return statistics.median(sw_attn.times), statistics.median(sw_mlp.times), statistics.median(sw_block.times)


def _time_levels(ad: Any, block0: nn.Module, x: Tensor, kwargs: dict[str, Any], a_levels: list[int],
                 m_levels: list[int], warmup: int, repeats: int, sync: bool
                 ) -> tuple[dict[int, float], dict[int, float], list[float]]:
    """One round over every level: ({attention level: s}, {MLP level: s}, [rest of the block per MLP level])."""
    attn_t: dict[int, float] = {}
    mlp_t: dict[int, float] = {}
    rests = []
    for a in a_levels:
        layer = copy.deepcopy(block0)
        slice_shapes(ad, [layer], [(a, ad.ffn_dim)])
        attn_t[a] = _time_block(ad, layer, x, kwargs, warmup, repeats, sync)[0]
    for m in m_levels:
        layer = copy.deepcopy(block0)
        slice_shapes(ad, [layer], [(ad.n_attn_groups, m)])
        ta, tm, tb = _time_block(ad, layer, x, kwargs, warmup, repeats, sync)
        mlp_t[m] = tm
        rests.append(max(0.0, tb - ta - tm))
    return attn_t, mlp_t, rests


def _fixed_seconds(model: nn.Module, block0: nn.Module, ids: Tensor, warmup: int, repeats: int, sync: bool) -> float:
    """Median time of the one-block model minus its block, in the same forward passes."""
    sw_block = _Stopwatch(block0, block0, sync)
    totals = []
    try:
        for _ in range(warmup + repeats):
            t = time.perf_counter()
            model(ids, use_cache=False)
            if sync:
                torch.cuda.synchronize()
            totals.append(time.perf_counter() - t)
    finally:
        sw_block.remove()
    fixed = [tot - blk for tot, blk in zip(totals[warmup:], sw_block.times[warmup:])]
    return max(0.0, statistics.median(fixed))


@torch.no_grad()
def latency_table(config: Any, batch: int = 1, seqlen: int = 128, threads: int = 1, repeats: int = 5,
                  warmup: int = 2, mlp_levels: int = 16, attn_levels: int | None = None,
                  device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True, dtype: str = "float32", removal: bool = False,
                  attention_unit: str | None = None) -> LatencyTable:
    """Measure (or read from the cache) the latency table of ``config``'s architecture.

    ``config``: the *dense* model's config (a model's config or the model itself).
    ``attn_levels``: number of attention levels timed (None: every group count; with the ``head``
    unit, every multiple of the KV-head count: L query heads in each KV group).
    ``removal``: also time level 0 of both parts (the module removed whole, :mod:`osscar.lm.removed`);
    the key then lists 0 among the levels (tables without it keep their keys). ``attention_unit``: the
    run's (:func:`osscar.lm.adapters.get_adapter`; None: kv-group).
    Returns a :class:`LatencyTable`; ``table.info["cached"]`` says whether it came from the cache.
    """
    config = getattr(config, "config", config)
    adapter = get_adapter(config, attention_unit)
    for name, v in (("batch", batch), ("seqlen", seqlen), ("threads", threads), ("repeats", repeats),
                    ("mlp_levels", mlp_levels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    device = resolve_device(device, "device")
    torch_dtype = check_model_dtype(dtype, "dtype")
    n_attn, n_mlp = adapter.n_attn_groups, adapter.ffn_dim
    a_levels = [a for a in default_levels(n_attn, attn_levels or n_attn) if a % adapter.attn_blocks == 0]
    m_levels = default_levels(n_mlp, mlp_levels)
    if removal:
        a_levels, m_levels = [0, *a_levels], [0, *m_levels]
    key = {"config_hash": config_hash(config, attention_unit), "model_type": config.model_type,
           "device": device_label(device),
           "dtype": dtype, "torch": torch.__version__, "threads": threads, "batch": batch, "seqlen": seqlen,
           "attn_levels": a_levels, "mlp_levels": m_levels, "rounds": ROUNDS}
    path = _path(cache_dir, key)
    cached = _read_cached(path, key) if use_cache else None
    if cached is not None:
        return cached
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    sync = device.type == "cuda"
    try:
        model = _one_block_model(config, device, torch_dtype)
        ad = get_adapter(model, attention_unit)
        block0 = ad.layers(model)[0]
        vocab = int(config.vocab_size)
        ids = torch.randint(0, vocab, (batch, seqlen), generator=torch.Generator().manual_seed(0)).to(device)
        x, kwargs = _capture(model, block0, ids)

        sweeps = [_time_levels(ad, block0, x, kwargs, a_levels, m_levels, warmup, repeats, sync) for _ in range(ROUNDS)]
        attn_t = {a: statistics.median(r[0][a] for r in sweeps) for a in a_levels}
        mlp_t = {m: statistics.median(r[1][m] for r in sweeps) for m in m_levels}
        rests = [v for r in sweeps for v in r[2]]
        fixed_s = _fixed_seconds(model, block0, ids, warmup, repeats, sync)
        raw = {"attn": {str(k): v for k, v in attn_t.items()}, "mlp": {str(k): v for k, v in mlp_t.items()}}
        attn_t, mlp_t = _monotone(attn_t), _monotone(mlp_t)
        table = LatencyTable(key=key, attn=attn_t, mlp=mlp_t, block_rest_s=statistics.median(rests),
                             fixed_model_s=fixed_s, n_layers=int(config.num_hidden_layers),
                             n_attn_groups=n_attn, ffn_dim=n_mlp,
                             info={"repeats": repeats, "warmup": warmup, "rounds": ROUNDS,
                                   "statistic": "median over rounds of the median over repeats",
                                   "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "raw": raw,
                                   "monotone": "narrower never slower: t[k] = min over widths ≥ k"})
    finally:
        torch.set_num_threads(old_threads)
    atomic_write_json(path, table.to_dict(), indent=1)
    table.info.update({"cached": False, "path": str(path)})
    return table



def prefill_comparison(dense_config: Any, sliced: nn.Module, widths: tuple[list[int], list[int]],
                       points: list[tuple[int, int]], load_dense: Callable[[], nn.Module], repeats: int = 5,
                       warmup: int = 2, cache_dir: str | os.PathLike | None = None,
                       use_cache: bool = True, attention_unit: str | None = None,
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Dense vs sliced prefill latency (:func:`osscar.lm.evaluation.measure.compare_latency`), cached per architecture.

    Latency depends on the architecture, not on the weight values, so runs that slice the same
    dense model (``dense_config``, taken before slicing) to the same ``widths`` (kept attention
    groups and kept neurons, one list entry per block) share one measurement. Cache key: (dense
    config hash, widths, device, torch version, threads = ``torch.get_num_threads()``, points
    (batch, seqlen), repeats, warmup; the run's ``attention_unit`` in the config hash); entries live under
    ``cache_root(cache_dir)/latency``.
    ``load_dense()`` builds the dense model (moved to ``sliced``'s device), only on a cache miss.

    Returns (rows, info): the rows of ``compare_latency`` and {"cached", "path", "measured_at", "key"}.
    """
    from osscar.io import atomic_write_json
    from osscar.lm.evaluation.measure import compare_latency
    from osscar.lm.sources.models import cache_root

    attn, mlp = (list(map(int, w)) for w in widths)
    if len(attn) != len(mlp) or not attn:
        raise ValueError(f"widths must be two equally long, non-empty per-block lists, got {len(attn)} and {len(mlp)}")
    if not points or any(len(pt) != 2 for pt in points):
        raise ValueError(f"points must be (batch, seqlen) pairs, got {points!r}")
    device = model_device(sliced)
    key = {"config_hash": config_hash(dense_config, attention_unit), "model_type": dense_config.model_type,
           "device": device_label(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "kept_attn": attn, "kept_mlp": mlp, "points": [[int(b), int(s)] for b, s in points],
           "repeats": int(repeats), "warmup": int(warmup), "timed": ["model", "blocks"]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_root(cache_dir) / "latency" / f"prefill-{key['config_hash']}-{digest}.json"
    if use_cache and path.is_file():
        try:
            d = json.loads(path.read_text())
            if d.get("key") == key:
                return d["rows"], {"cached": True, "path": str(path), "measured_at": d.get("measured_at"), "key": key}
        except (ValueError, KeyError):
            pass  # a corrupt entry is re-measured and overwritten
    rows = compare_latency(load_dense().to(device), sliced, [(int(b), int(s)) for b, s in points], repeats, warmup)
    measured_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(path, {"key": key, "rows": rows, "measured_at": measured_at})
    return rows, {"cached": False, "path": str(path), "measured_at": measured_at, "key": key}
