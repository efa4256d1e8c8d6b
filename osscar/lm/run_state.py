"""The state one LM run carries between its steps (:mod:`osscar.lm.run`), the uniform widths it applies,
and the events it tells its caller while it runs. No model library is imported here: the CLI reads
:class:`Widths` and :class:`RunEvents` before anything heavy loads."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from osscar.lm.targets import heads_removed, removed_count

if TYPE_CHECKING:
    from osscar.lm.run_config import LMRunConfig


def _ignore(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Widths:
    """The uniform plan of one model: groups per block and how many of them every pruned block keeps.

    Read from the adapter before slicing rewrites the model's config. ``attn_blocks`` > 1: query heads are
    pruned the same number in each of that many KV groups (``n_attn`` counts query heads); otherwise
    ``n_attn`` counts heads (MHA) or whole KV groups.
    """

    n_attn: int
    n_mlp: int
    keep_attn: int
    keep_mlp: int
    head_fraction: float
    neuron_fraction: float
    attention_unit: str
    attn_blocks: int
    kv_groups: int
    heads_per_group: int
    allocation: str

    @property
    def head_fraction_applied(self) -> float:
        return 1 - self.keep_attn / self.n_attn

    @property
    def neuron_fraction_applied(self) -> float:
        return 1 - self.keep_mlp / self.n_mlp


def uniform_widths(adapter: Any, head_fraction: float, neuron_fraction: float, allocation: str) -> Widths:
    """:class:`Widths` of ``adapter``'s model for the requested fractions (rounding: :mod:`osscar.lm.targets`)."""
    n_attn, n_mlp, blocks = adapter.n_attn_groups, adapter.ffn_dim, adapter.attn_blocks
    if blocks > 1:  # query heads, the same number in every KV group
        per = n_attn // blocks
        keep_attn = blocks * (per - heads_removed(head_fraction, per))
    else:
        keep_attn = n_attn - removed_count(head_fraction, n_attn)
    return Widths(n_attn=n_attn, n_mlp=n_mlp, keep_attn=keep_attn, keep_mlp=n_mlp - removed_count(neuron_fraction, n_mlp),
                  head_fraction=head_fraction, neuron_fraction=neuron_fraction, attention_unit=adapter.attention_unit,
                  attn_blocks=blocks, kv_groups=adapter.n_kv_heads, heads_per_group=adapter.heads_per_group,
                  allocation=allocation)


@dataclass
class RunEvents:
    """What a run tells its caller while it runs; the CLI prints it, a sweep prints its steps under the run's line.

    ``step(text)``: a step that may take a while is starting; ``widths(Widths)``: the uniform plan, before
    any solving; ``dense(results)``: the dense model's evaluation, as soon as it exists.
    """

    step: Callable[[str], None] = _ignore
    widths: Callable[[Widths], None] = _ignore
    dense: Callable[[dict[str, Any]], None] = _ignore


def step_events(say: Callable[[str], None]) -> dict[str, Any]:
    """``run_lm``'s keyword arguments that report each long step through ``say`` (a sweep's log lines)."""
    return {"events": RunEvents(step=say)}


@dataclass(frozen=True)
class ConsumerMethods:
    """One method object per consumer kind (their parameters may differ), routed by the problem's name."""

    attn: Any
    mlp: Any
    attn_consumer: str

    def _for(self, problem: Any) -> Any:
        return self.attn if problem.name.endswith(self.attn_consumer) else self.mlp

    def prune(self, problem: Any) -> Any:
        return self._for(problem).prune(problem)

    def prune_ladder(self, problem_at: Any, levels: Any) -> dict[int, Any]:
        """The consumer's method's :meth:`~osscar.method.PruningMethod.prune_ladder` (routed by ``problem_at``'s name)."""
        if not levels:
            return {}
        return self._for(problem_at(max(levels))).prune_ladder(problem_at, levels)

    @property
    def name(self) -> str:
        return self.attn.name

    def params(self) -> dict[str, Any]:
        """The method's parameters; per consumer when they differ (a candidate database is keyed by them)."""
        attn, mlp = self.attn.params(), self.mlp.params()
        return attn if attn == mlp else {"attn": attn, "mlp": mlp}


@dataclass
class RunState:
    """Everything one LM run holds between its steps (each step fills its part)."""

    config: LMRunConfig
    device: Any
    progress: bool
    events: RunEvents
    t0: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    # read_text: token ids (n, seqlen) of the calibration segments, eval windows per corpus, held-out windows
    tok: Any = None
    segments: Any = None
    windows: dict[str, Any] = field(default_factory=dict)
    heldout: Any = None
    heldout_info: Any = None
    drift_reference: Any = None  # the dense model on the held-out windows (drift=True)
    # load
    loaded: Any = None
    model: Any = None
    handle: Any = None
    adapter: Any = None
    widths: Widths | None = None
    dense_params: int = 0
    dense_flops: dict[str, Any] = field(default_factory=dict)
    dense_config: Any = None
    # prune
    methods: ConsumerMethods | None = None
    widths_attn: list[int] = field(default_factory=list)  # per block, every block of the model
    widths_mlp: list[int] = field(default_factory=list)
    outcome: Any = None
    rss_before: float | None = None
    rss_after: float | None = None
    # slice
    sliced: bool = False
    manifest: Any = None
    slice_diff: float | None = None

    def timed(self, key: str, t: float) -> None:
        self.timings[key] = time.perf_counter() - t
