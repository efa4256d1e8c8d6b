"""A memory plan of one LM run, from the model's config alone (no weights): bytes per phase and item.

:func:`memory_plan` counts what :func:`osscar.lm.run.run_lm` holds (offload mode ``none``: the
whole model moves to the run's device and stays there) in three phases, each one's peak the sum
of its items:

* ``load`` — ``from_pretrained`` builds the whole model on the host in ``dtype``; on a CUDA device
  it is then moved there (the host copy is freed).
* ``prune`` — on the device: the resident model; the calibration activations of one block, in
  (block 0's captured inputs, then each block's outputs) and out, ``n·seqlen·d`` in ``dtype``
  each; the MLP consumer's inputs kept for the no-rerun step (``n·seqlen·ffn`` float32, only when
  they fit in :data:`osscar.lm.calibrate.calibration.SHORTCUT_BYTES`); one batch's block forward (attention
  scores, MLP intermediates, the Hessian hook's float32 copy); and the largest consumer's solve
  in float64 (:func:`solve_parts`): the problem's ``H: (p, p)`` (the accumulated ``H_raw`` only while it is built),
  ``G, Ŵ: (p, m)`` and the method's working set (:func:`solver_working_set`).
* ``evaluate`` — the (dense, then sliced) resident model and one perplexity window's logits
  (``eval_seqlen × vocab`` in ``dtype`` plus two float32 copies), and with latency points a second,
  dense copy of the model (built on a latency-cache miss).

With block offloading (``offload`` ``cpu`` or ``disk``, :mod:`osscar.lm.offloading.offload`) the device holds one
block at a time. ``prune``: one block's weights, the embeddings / LM head / final norm (counted beside it, although
they visit the device only for the capture), one batch's block input and output, and the same forward and solve; the
activations of all segments (in, out and the no-rerun step's MLP inputs) wait on the host. ``evaluate``: one block,
the embeddings and LM head, one window's hidden states and logits on the device; one chunk of windows' hidden states
(at most :data:`osscar.lm.offloading.streaming_eval.EVAL_HOST_BYTES`) on the host. ``cpu`` keeps the whole model in
host memory; ``disk`` holds there only the block being read (and, pruning, its sliced copy being written). On a CPU
device the host column repeats the device's.

Byte counts are of the tensors named and, on CUDA, cuBLAS's workspace (prune, evaluate); allocator slack, the CUDA
context and library code (a few hundred MiB) are not in them. Sizes come from a one-block meta-device model (shapes
only), so any architecture transformers knows is counted exactly, tied embeddings once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from osscar.lm.shape import ModelShape, model_shape  # noqa: F401  (re-exported)
from osscar.options import MODEL_DTYPES, OFFLOAD_MODES
from osscar.validate import parse_bytes

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
F64 = 8
F32 = 4
CALIB_BATCH = 8  # prune_model_sequential's batch_size
PHASES = ("load", "prune", "evaluate")
GiB = 2 ** 30


@dataclass(frozen=True)
class PlanItem:
    """One tensor (or group of tensors) a phase holds: ``bytes`` on ``where`` (``device``/``host``)."""

    phase: str
    where: str
    name: str
    shape: str
    bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted memory of a run per phase; a phase's peak is the sum of its items."""

    model: str
    device_type: str
    dtype: str
    offload: str
    n_samples: int
    seqlen: int
    method: str
    items: tuple[PlanItem, ...]

    def peak(self, where: str, phase: str | None = None) -> int:
        """Bytes on ``where`` at the peak of ``phase`` (None: the largest phase)."""
        phases = PHASES if phase is None else (phase,)
        return max(sum(i.bytes for i in self.items if i.where == where and i.phase == ph) for ph in phases)

    def peak_phase(self, where: str) -> str:
        return max(PHASES, key=lambda ph: self.peak(where, ph))

    def largest(self, where: str, phase: str | None = None) -> PlanItem | None:
        """The largest item on ``where`` in ``phase`` (None: the peak phase); None if there is none then."""
        phase = phase or self.peak_phase(where)
        return max((i for i in self.items if i.where == where and i.phase == phase), key=lambda i: i.bytes,
                   default=None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["items"] = [asdict(i) for i in self.items]
        out["peak_bytes"] = {w: {ph: self.peak(w, ph) for ph in PHASES} for w in ("device", "host")}
        return out

    def format(self) -> str:
        """A compact table: one row per phase, device and host peak and the phase's largest item."""
        where = "device" if self.device_type == "cuda" else "host (= device)"
        lines = [f"memory plan ({self.model}, {self.dtype}, {self.n_samples}×{self.seqlen} calibration, "
                 f"{self.method}, offload {self.offload}; {where}):",
                 f"  {'phase':<9}{'device':>10}{'host':>10}  largest item"]
        for ph in PHASES:
            big = self.largest("device", ph) or self.largest("host", ph)
            what = f"{big.name} {big.shape} {fmt_bytes(big.bytes)}" if big else "-"
            lines.append(f"  {ph:<9}{fmt_bytes(self.peak('device', ph)):>10}"
                         f"{fmt_bytes(self.peak('host', ph)) if self.device_type == 'cuda' else '=':>10}  {what}")
        return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    """``n`` bytes as GiB (≥ 1 GiB), MiB (≥ 1 MiB) or KiB."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def count(n: int) -> str:
    """A parameter count: 1.32B, 50M, 16k."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def solver_working_set(method: str, p: int, m: int, kept_rows: int) -> tuple[int, str]:
    """(bytes, what) of the float64 tensors ``method`` adds at its high point on a (p, m) problem keeping
    ``kept_rows`` rows, as the method states it (:meth:`osscar.method.PruningMethod.working_set`).

    A method that states none (a plugin that did not declare it) is refused with a ValueError rather than
    planned with a guess.
    """
    from osscar.methods import get_method

    cls = get_method(method)
    stated = cls.working_set(p, m, kept_rows)
    if stated is None:
        raise ValueError(f"method={method!r} does not state its working set, so the memory plan cannot count its "
                         f"solve: give {cls.__name__} a classmethod working_set(p, m, kept_rows) returning "
                         "(float64 numbers, what they are) (osscar.method.PruningMethod.working_set)")
    n, what = stated
    return F64 * int(n), what


def solve_parts(method: str, p: int, m: int, kept_rows: int) -> list[tuple[str, str, int]]:
    """[(name, shape, bytes)] of one consumer's solve in float64: the problem's ``H: (p, p)``, ``G, Ŵ: (p, m)``
    and the larger of the method's working set and the problem construction's transients (the
    accumulated ``H_raw`` and H's float64 copy while H + Hᵀ is formed: (p, p) each; the pipeline drops
    ``H_raw`` once the problem is built, :meth:`osscar.problem.LayerProblem.calibration_error`)."""
    ws, _ = solver_working_set(method, p, m, kept_rows)
    return [("H", f"{p}×{p} f64", F64 * p * p), ("G, Ŵ", f"2×{p}×{m} f64", F64 * 2 * p * m),
            (f"{method} working set", f"p={p} m={m} f64", max(ws, F64 * 2 * p * p))]


def solve_bytes(method: str, p: int, m: int, kept_rows: int) -> int:
    """Bytes of one consumer's solve: the sum of :func:`solve_parts`."""
    return sum(n for _, _, n in solve_parts(method, p, m, kept_rows))


def memory_plan(shape: ModelShape, *, model: str, n_samples: int, seqlen: int, dtype: str, method: str,
                device_type: str, keep_fraction: tuple[float, float] = (0.5, 0.5), offload: str = "none",
                eval_seqlen: int | None = None, latency: bool = False,
                shortcut_bytes: int | None = None, eval_windows: int | None = None, stitched: bool = False,
                drift_tokens: int = 0) -> MemoryPlan:
    """The plan of one run (module docstring). ``keep_fraction``: (attention, MLP) groups kept.

    ``stitched``: a global allocation search (``spdy``/``evolutionary``) holds the sliced blocks of one stitched
    model while it scores candidates; ``drift_tokens``: held-out tokens whose dense hidden states and
    log-probabilities wait on the host through pruning (``drift=True``).
    ``device_type`` ``cuda``: device and host items apart; ``cpu``: the device is the host, so every
    item is on ``device`` and the host column repeats it. ``offload``: ``none``, ``cpu`` or ``disk``
    (module docstring). ``eval_windows``: windows per corpus if capped (offloaded evaluation keeps a
    chunk of them on the host; None: a full chunk).
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload={offload!r} is unknown; allowed: {', '.join(OFFLOAD_MODES)}")
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, got {dtype!r}")
    if shortcut_bytes is None:
        from osscar.lm.calibrate.calibration import SHORTCUT_BYTES

        shortcut_bytes = SHORTCUT_BYTES
    ctx = _PlanContext(shape, n_samples, seqlen, eval_seqlen or seqlen, DTYPE_BYTES[dtype], method, device_type,
                       offload, [])
    _load_items(ctx)
    _prune_items(ctx, keep_fraction, shortcut_bytes)
    _evaluate_items(ctx, latency, eval_windows)
    _allocation_items(ctx, stitched, drift_tokens)
    if device_type == "cuda":  # cuBLAS's workspace: allocated at the first matrix product, held to the end
        from osscar.devices import cublas_workspace_bytes
        ctx.items += [PlanItem(ph, "device", "cuBLAS workspace", "", cublas_workspace_bytes()) for ph in PHASES[1:]]
    items = ctx.items
    if device_type != "cuda":  # the device is the host: one set of items, listed for both
        if offload == "cpu":  # the whole model waits in host memory beside the resident block
            for ph in PHASES[1:]:
                ctx.add(ph, "the rest of the model (host)", f"{shape.n_layers - 1}×{count(shape.block_params)}",
                        (shape.n_layers - 1) * ctx.block)
        items = [PlanItem(i.phase, w, i.name, i.shape, i.bytes) for w in ("device", "host") for i in items]
    return MemoryPlan(model=model, device_type=device_type, dtype=dtype, offload=offload, n_samples=n_samples,
                      seqlen=seqlen, method=method, items=tuple(items))

@dataclass
class _PlanContext:
    """What the phases of one plan share; ``items`` grows as each phase adds its tensors."""

    shape: ModelShape
    n_samples: int
    seqlen: int
    eval_len: int
    b: int  # bytes per element of the model's dtype
    method: str
    device_type: str
    offload: str
    items: list[PlanItem]

    def add(self, phase: str, name: str, shp: str, n: int, where: str = "device") -> None:
        self.items.append(PlanItem(phase, where, name, shp, int(n)))

    @property
    def offloaded(self) -> bool:
        return self.offload != "none"

    @property
    def weights(self) -> int:
        return self.shape.params * self.b

    @property
    def block(self) -> int:
        return self.shape.block_params * self.b

    @property
    def rest(self) -> int:
        return self.shape.other_params * self.b


def _load_items(c: _PlanContext) -> None:
    """Load: the whole model on the host (then moved to a CUDA device); disk: one block's tensors at a time."""
    shape = c.shape
    if c.offload == "disk":
        c.add("load", "one block read from the shards", count(shape.block_params), c.block, "host")
    else:
        c.add("load", "weights", f"{count(shape.params)} params", c.weights, "host")
    if c.device_type == "cuda" and not c.offloaded:
        c.add("load", "weights", f"{count(shape.params)} params", c.weights)


def _prune_items(c: _PlanContext, keep_fraction: tuple[float, float], shortcut_bytes: int) -> None:
    """Prune: the resident model (or one block), activations in/out, one batch's forward, the largest solve."""
    shape, b, n_samples, seqlen = c.shape, c.b, c.n_samples, c.seqlen
    d, ffn = shape.hidden, shape.ffn
    rows, batch_rows = n_samples * seqlen, min(CALIB_BATCH, n_samples) * seqlen
    acts_on = "host" if c.offloaded else "device"  # where the activations of all segments wait
    if c.offloaded:
        c.add("prune", "one block (resident)", count(shape.block_params), c.block)
        c.add("prune", "embeddings, LM head, norm (capture only)", count(shape.other_params), c.rest)
        c.add("prune", "one batch in and out", f"2×{min(CALIB_BATCH, n_samples)}×{seqlen}×{d}", 2 * batch_rows * d * b)
    else:
        c.add("prune", "block weights (all resident)", f"{shape.n_layers}×{count(shape.block_params)}",
              shape.n_layers * shape.block_params * b)
        c.add("prune", "embeddings, LM head, norm", count(shape.other_params), c.rest)
    c.add("prune", "activations in", f"{n_samples}×{seqlen}×{d}", rows * d * b, acts_on)
    c.add("prune", "activations out", f"{n_samples}×{seqlen}×{d}", rows * d * b, acts_on)
    if shape.mlp_residual and rows * ffn * F32 <= shortcut_bytes:
        c.add("prune", "MLP inputs (no-rerun step)", f"{n_samples}×{seqlen}×{ffn} f32", rows * ffn * F32, acts_on)
    if shape.eager_attention:
        c.add("prune", "attention masks (eager)", f"{n_samples}×{seqlen}×{seqlen}", n_samples * seqlen * seqlen * b)
    scores = 2 * min(CALIB_BATCH, n_samples) * shape.n_heads * seqlen * seqlen * b if shape.eager_attention else 0
    fwd = (scores + 3 * batch_rows * ffn * b + batch_rows * max(ffn, shape.attn_p) * F32 + 4 * batch_rows * d * b)
    c.add("prune", "one batch's block forward", f"{min(CALIB_BATCH, n_samples)}×{seqlen}", fwd)
    consumers = (("attention", shape.attn_p, keep_fraction[0]), ("MLP", ffn, keep_fraction[1]))
    _, part, p, keep = max((solve_bytes(c.method, p, d, round(keep * p)), part, p, keep) for part, p, keep in consumers)
    for name, shp, n in solve_parts(c.method, p, d, round(keep * p)):
        c.add("prune", f"solve {part}: {name}", shp, n)
    if c.device_type == "cuda" and c.offload == "cpu":
        c.add("prune", "the model (host)", f"{count(shape.params)} params", c.weights, "host")
    elif c.device_type == "cuda" and c.offload == "disk":
        c.add("prune", "one block read and its sliced copy (host)", f"2×{count(shape.block_params)}", 2 * c.block, "host")


def _evaluate_items(c: _PlanContext, latency: bool, eval_windows: int | None) -> None:
    """Evaluate: the resident model (or one block, the embeddings and LM head), one window's logits."""
    shape, L, d, b = c.shape, c.eval_len, c.shape.hidden, c.b
    logits = ("logits of one window", f"{L}×{shape.vocab}", L * shape.vocab * (b + 2 * F32))
    if not c.offloaded:
        c.add("evaluate", "weights (resident)", f"{count(shape.params)} params", c.weights)
        c.add("evaluate", *logits)
        if latency:
            c.add("evaluate", "dense copy for latency timing (cache miss)", f"{count(shape.params)} params", c.weights)
        return
    from osscar.lm.offloading.streaming_eval import EVAL_HOST_BYTES

    c.add("evaluate", "one block (resident)", count(shape.block_params), c.block)
    c.add("evaluate", "embeddings, LM head, norm", count(shape.other_params), c.rest)
    c.add("evaluate", "hidden states of one window in and out", f"2×{L}×{d}", 2 * L * d * b)
    c.add("evaluate", *logits)
    per_window = L * d * b
    chunk = max(1, EVAL_HOST_BYTES // per_window)
    chunk = min(chunk, eval_windows) if eval_windows else chunk
    c.add("evaluate", "hidden states of one chunk of windows", f"{chunk}×{L}×{d}", chunk * per_window, "host")
    if c.device_type == "cuda" and c.offload == "cpu":
        c.add("evaluate", "the model (host)", f"{count(shape.params)} params", c.weights, "host")
    elif c.device_type == "cuda":
        c.add("evaluate", "one block read (host)", count(shape.block_params), c.block, "host")


def _allocation_items(c: _PlanContext, stitched: bool, drift_tokens: int) -> None:
    """A global search's stitched blocks (prune phase; ``stitch(share_weights=True)`` shares every other tensor, so
    at most the dense blocks); the drift reference on the host (prune, evaluate)."""
    shape = c.shape
    if stitched:
        c.add("prune", "stitched blocks scored by the width search", f"{shape.n_layers}×{count(shape.block_params)} params",
              shape.n_layers * shape.block_params * c.b)
    if drift_tokens:
        n = drift_tokens * (shape.n_layers * shape.hidden + shape.vocab) * F32
        for phase in ("prune", "evaluate"):
            c.add(phase, "held-out reference: dense hidden states and log-probabilities",
                  f"{drift_tokens}×({shape.n_layers}×{shape.hidden}+{shape.vocab}) f32", n, "host")


def plan_for_run(config: Any, shape: ModelShape, **changes: Any) -> MemoryPlan:
    """The plan of an :class:`osscar.lm.run.LMRunConfig` (``changes``: fields overridden, e.g. dtype)."""
    c = {f: getattr(config, f) for f in ("model", "n_samples", "seqlen", "dtype", "method", "device", "offload",
                                          "eval_seqlen", "latency_points")}
    c["eval_windows"] = getattr(config, "eval_windows", None)
    c.update(changes)
    hf, nf = config.fractions()
    return memory_plan(shape, model=c["model"], n_samples=c["n_samples"], seqlen=c["seqlen"], dtype=c["dtype"],
                       method=c["method"], device_type=str(c["device"]).split(":")[0], keep_fraction=(1 - hf, 1 - nf),
                       offload=c["offload"], eval_seqlen=c["eval_seqlen"], latency=bool(c["latency_points"]),
                       eval_windows=c["eval_windows"],
                       stitched=getattr(config, "allocation", "uniform") in ("spdy", "evolutionary"),
                       drift_tokens=(config.heldout_samples * (config.heldout_seqlen or config.seqlen)
                                     if getattr(config, "drift", False) else 0))


def check_memory(config: Any) -> tuple[MemoryPlan, str, str | None]:
    """(the plan of an :class:`osscar.lm.run.LMRunConfig`, the limit it was checked against, the error or
    None), from the config alone: no weights load. First :func:`osscar.lm.run_config.check_model` (ValueError).

    The error (naming the largest item and an option that would fit, :func:`fit_error`) when the
    plan's device peak exceeds ``max_device_memory`` or, unset, :func:`osscar.devices.available_bytes`.
    """
    from osscar.devices import available_bytes, resolve_device
    from osscar.lm.run_config import check_model
    from osscar.lm.sources.models import load_config

    check_model(config)  # the model's own checks (architecture, lengths, ...) before its plan
    device = resolve_device(config.device, "device")
    mconf = load_config(config.model, config.cache_dir)
    shape = model_shape(mconf)
    if config.max_device_memory is not None:
        limit, what = parse_bytes(config.max_device_memory), "max_device_memory"
    else:
        limit, what = available_bytes(str(device))
    return plan_for_run(config, shape), f"{what} {fmt_bytes(limit)}", fit_error(config, shape, limit, what)


def fit_error(config: Any, shape: ModelShape, limit: int, limit_what: str) -> str | None:
    """None if the plan's device peak fits in ``limit`` bytes; else a one-line reason naming the
    largest item and the first change of the run's options that would fit (or that none does)."""
    plan = plan_for_run(config, shape)
    need = plan.peak("device")
    if need <= limit:
        return None
    phase = plan.peak_phase("device")
    big = plan.largest("device", phase)
    msg = (f"the memory plan needs {fmt_bytes(need)} on {plan.device_type} (phase {phase}) but {limit_what} is "
           f"{fmt_bytes(limit)}; largest item: {big.name} {big.shape} {fmt_bytes(big.bytes)}; ")
    tries: list[tuple[str, dict[str, Any]]] = []
    if config.dtype == "float32":
        tries.append(("dtype=bfloat16 (or float16)", {"dtype": "bfloat16"}))
    n = config.n_samples
    while n > 1:
        n //= 2
        tries.append((f"n_samples={n}", {"n_samples": n}))
    modes = [] if config.offload == "disk" else (["disk"] if config.offload == "cpu" or plan.device_type != "cuda"
                                                  else ["cpu", "disk"])
    for mode in modes:  # one block resident: cpu keeps the model on the host, disk reads it from the shards
        tries.append((f"offload={mode}", {"offload": mode}))
        if config.dtype == "float32":
            tries.append((f"offload={mode} and dtype=bfloat16", {"offload": mode, "dtype": "bfloat16"}))
    for what, change in tries:
        if plan_for_run(config, shape, **change).peak("device") <= limit:
            return msg + f"it fits with {what}"
    least = {"n_samples": 1, "dtype": "bfloat16", "offload": "disk"}
    floor = plan_for_run(config, shape, **least).peak("device")
    return msg + (f"no dtype, n_samples or offload makes it fit (the least is {fmt_bytes(floor)}, at bfloat16, "
                  "n_samples=1 and offload=disk)")
