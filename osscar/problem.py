"""The layer-wise pruning problem shared by OSSCAR and every baseline.

A consumer layer with dense weights ``W_dense: (p, m)`` (PyTorch's ``weight.T``) reads
``p`` input features that are partitioned into ``n_groups = p // group_size`` contiguous
groups. Pruning keeps ``k`` groups and re-optimises the kept rows to minimise

    Q(W) = ½ tr(Wᵀ H W) − tr(Gᵀ W)

with the damped Gram matrix ``H = XᵀX + λ·mean(diag XᵀX)·I`` and ``G = H W_dense`` (language
models) or ``G = X̃ᵀ X_d W_dense`` (vision, two calibration streams). ``Q`` plus the constant
½ tr(Ŵᵀ XᵀX Ŵ) is the reconstruction error ½‖X Ŵ − X W‖²_F.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from osscar.blockmath import take_square
from osscar.groups import block_rows
from osscar.options import DEFAULT_DAMPING

SOLVER_DTYPE = torch.float64


def _check_finite(name: str, t: Tensor) -> None:
    # in slices of ~2^16 entries: torch.isfinite makes full-size temporaries (|t| and masks)
    parts = t.split(max(1, (1 << 16) // max(1, t[0].numel()))) if t.ndim and len(t) else (t,)
    if not all(bool(torch.isfinite(part).all()) for part in parts):
        raise ValueError(f"{name} contains NaN or Inf; all entries must be finite")


def _check_matrix(name: str, t: Tensor, rows: int | None = None, cols: int | None = None) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows (one per input feature), got shape {tuple(t.shape)}")
    if cols is not None and t.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got shape {tuple(t.shape)}")


def _check_square_symmetric(name: str, H: Tensor) -> None:
    _check_matrix(name, H)
    if H.shape[0] != H.shape[1]:
        raise ValueError(f"{name} must be square (p, p), got shape {tuple(H.shape)}")
    _check_finite(name, H)
    scale = asym = 0.0
    for i0 in range(0, H.shape[0], 64):  # a block of rows at a time: no (p, p) temporaries
        rows = H[i0:i0 + 64]
        scale = max(scale, float(rows.abs().max()))
        asym = max(asym, float((rows - H[:, i0:i0 + 64].T).abs().max()))
    if asym > 1e-6 * max(scale, 1e-300):
        raise ValueError(f"{name} must be symmetric: max |{name} - {name}ᵀ| = {asym:.3g} (scale {scale:.3g})")


def check_group_size(p: int, group_size: int) -> int:
    """Validate ``group_size`` against ``p`` features; return the number of groups."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if p % group_size != 0:
        raise ValueError(
            f"group_size={group_size} must divide the number of input features p={p} "
            f"(allowed: divisors of {p})"
        )
    return p // group_size


def check_keep(k: int, n_groups: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= n_groups:
        raise ValueError(f"k (groups to keep) must be an integer in [0, {n_groups}], got {k!r}")


def check_blocks(blocks: int, n_groups: int, k: int) -> None:
    """``blocks`` must divide both the groups and the groups kept (the same count kept per block)."""
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
    if n_groups % blocks:
        raise ValueError(f"blocks={blocks} must divide the number of groups {n_groups}")
    if k % blocks:
        raise ValueError(f"k={k} groups kept must be a multiple of blocks={blocks} (the same count in every block)")


@dataclass(frozen=True)
class LayerProblem:
    """One consumer layer to prune. Build it with :meth:`from_calibration` in most cases.

    Attributes:
        H: (p, p) float64, damped, symmetric positive definite.
        G: (p, m) float64, the linear term (``H @ W_dense`` for language models).
        W_dense: (p, m) float64, the dense weights Ŵ (dead features' rows zeroed).
        group_size: features per group; groups are contiguous blocks of rows.
        k: number of groups to keep, 0 ≤ k ≤ n_groups.
        damping: λ used to build ``H`` (recorded, already applied).
        activations: optional (N, n_groups, L) producer output maps per sample (CHIP).
        producer_weight: optional (n_groups, d) producer filters, one row per group (FPGM).
        name: a label for progress and records, e.g. ``"model.layers.3.mlp.down_proj"``.
        G_is_HW: True when ``G == H @ W_dense`` (then H⁻¹G = Ŵ needs no solve).
        blocks: a partition constraint: the groups form ``blocks`` contiguous, equal blocks (e.g. the
            query heads of each KV group) and every block keeps ``k / blocks`` groups. 1 (default):
            no constraint.
        diag_shift: what damping added to H's diagonal (λ·mean(diag XᵀX)), so that XᵀX = H − diag_shift·I
            on the features that fire (:meth:`calibration_error` needs no copy of the raw XᵀX).
    """

    H: Tensor
    G: Tensor
    W_dense: Tensor
    group_size: int
    k: int
    damping: float = 0.0
    activations: Tensor | None = field(default=None, repr=False)
    producer_weight: Tensor | None = field(default=None, repr=False)
    name: str = ""
    G_is_HW: bool = False
    blocks: int = 1
    diag_shift: float = 0.0

    def __post_init__(self) -> None:
        devices = {name: getattr(self, name).device for name in ("H", "G", "W_dense") if isinstance(getattr(self, name), Tensor)}
        if len(set(devices.values())) > 1:
            raise ValueError(f"H, G and W_dense must be on one device (the solver's), got {devices}")
        _check_square_symmetric("H", self.H)
        p = self.H.shape[0]
        _check_matrix("W_dense", self.W_dense, rows=p)
        _check_finite("W_dense", self.W_dense)
        _check_matrix("G", self.G, rows=p, cols=self.W_dense.shape[1])
        _check_finite("G", self.G)
        n_groups = check_group_size(p, self.group_size)
        check_keep(self.k, n_groups)
        check_blocks(self.blocks, n_groups, self.k)
        if not (isinstance(self.damping, (int, float)) and math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0, got {self.damping!r}")
        if self.activations is not None:
            if self.activations.ndim != 3 or self.activations.shape[1] != n_groups:
                raise ValueError(
                    f"activations must have shape (N, n_groups={n_groups}, L), got {tuple(self.activations.shape)}"
                )
            _check_finite("activations", self.activations)
        if self.producer_weight is not None:
            if self.producer_weight.ndim != 2 or self.producer_weight.shape[0] != n_groups:
                raise ValueError(
                    f"producer_weight must have shape (n_groups={n_groups}, d), got {tuple(self.producer_weight.shape)}"
                )
            _check_finite("producer_weight", self.producer_weight)
        for name in ("H", "G", "W_dense"):
            if getattr(self, name).dtype != SOLVER_DTYPE:
                object.__setattr__(self, name, getattr(self, name).to(SOLVER_DTYPE))

    # -- derived sizes ---------------------------------------------------------------
    @property
    def p(self) -> int:
        return self.H.shape[0]

    @property
    def m(self) -> int:
        return self.W_dense.shape[1]

    @property
    def device(self) -> torch.device:
        """Where the solver runs: the device of H, G and Ŵ (methods follow it)."""
        return self.H.device

    @property
    def n_groups(self) -> int:
        return self.p // self.group_size

    @property
    def block_size(self) -> int:
        """Groups per block of the partition constraint (all groups when ``blocks == 1``)."""
        return self.n_groups // self.blocks

    @property
    def block_keep(self) -> int:
        """Groups every block keeps."""
        return self.k // self.blocks

    def block_of(self, groups: Tensor) -> Tensor:
        """Block index of each group: (n,) long -> (n,) long."""
        return torch.as_tensor(groups, dtype=torch.long) // self.block_size

    def rows_of(self, groups: Tensor) -> Tensor:
        """Feature (row) indices of ``groups``: (len(groups) * group_size,) long, group-major."""
        return block_rows(groups, self.group_size)

    # -- objective ---------------------------------------------------------------------
    def objective(self, W: Tensor) -> float:
        """Q(W) = ½ tr(WᵀHW) − tr(GᵀW), computed directly in float64. W: (p, m)."""
        W = W.to(SOLVER_DTYPE)
        live = torch.nonzero((W != 0).any(dim=1)).flatten()
        Ws = W[live]
        HW = take_square(self.H, live) @ Ws  # (|S|, m); products in place, one temporary at a time
        quad = HW.mul_(Ws).sum()
        del HW
        lin = self.G[live].mul_(Ws).sum()
        return float(0.5 * quad - lin)

    def dense_objective(self) -> float:
        """Q at the unconstrained optimum W* = H⁻¹G (the value with every group kept).

        Q(W*) = −½ tr(Gᵀ W*); when G = H Ŵ, W* = Ŵ and no solve is needed.
        """
        W = self.W_dense if self.G_is_HW else torch.cholesky_solve(self.G, torch.linalg.cholesky(self.H))
        return float(-0.5 * (self.G * W).sum())

    def calibration_error(self, W: Tensor) -> tuple[float, float]:
        """:func:`reconstruction_error` on the calibration inputs, from the damped H alone:
        XᵀX = H − diag_shift·I on the features that fire (those that never fire have zero rows in
        Ŵ and in every refit W, so they add nothing). W: (p, m) pruned weights.
        Returns (½ tr(ΔᵀXᵀXΔ) with Δ = W − Ŵ, that over ½ tr(ŴᵀXᵀXŴ); NaN when the latter is 0)."""
        _check_matrix("W", W, rows=self.p, cols=self.m)
        Wd = self.W_dense
        D = W.to(device=Wd.device, dtype=SOLVER_DTYPE) - Wd
        sq = float(D.square().sum())
        err = 0.5 * (float((self.H @ D).mul_(D).sum()) - self.diag_shift * sq)  # one (p, m) temporary at a time
        del D
        energy = 0.5 * (float((self.H @ Wd).mul_(Wd).sum()) - self.diag_shift * float(Wd.square().sum()))
        return err, (err / energy if energy > 0 else float("nan"))

    # -- construction from calibration statistics ----------------------------------------
    @classmethod
    def from_calibration(
        cls,
        H_raw: Tensor,
        W_dense: Tensor,
        group_size: int,
        k: int,
        damping: float = DEFAULT_DAMPING,
        cross: Tensor | None = None,
        activations: Tensor | None = None,
        producer_weight: Tensor | None = None,
        name: str = "",
        blocks: int = 1,
    ) -> LayerProblem:
        """Build a problem from raw second moments.

        Args:
            H_raw: (p, p) XᵀX of the (partially pruned) model's inputs to this layer.
            W_dense: (p, m) dense weights Ŵ (``layer.weight.T``; for convs the unfolded weight).
            group_size: features per group (1 per neuron, head_dim per head, k² per conv channel).
            k: groups to keep.
            damping: λ ≥ 0; H = H_raw + λ·mean(diag H_raw)·I.
            cross: optional (p, p) X̃ᵀX_d between pruned-model and dense-model inputs;
                then G = cross @ Ŵ (vision protocol) instead of H @ Ŵ.
            blocks: partition constraint (see the class docstring).
        """
        _check_square_symmetric("H_raw", H_raw)
        p = H_raw.shape[0]
        _check_matrix("W_dense", W_dense, rows=p)
        _check_finite("W_dense", W_dense)
        check_group_size(p, group_size)
        check_keep(k, p // group_size)
        check_blocks(blocks, p // group_size, k)
        if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0, got {damping!r}")
        if cross is not None:
            _check_matrix("cross", cross, rows=p, cols=p)
            _check_finite("cross", cross)
        H = H_raw.to(SOLVER_DTYPE)  # H_raw itself when float64: the sum below is the new matrix
        H = torch.add(H, H.T).mul_(0.5)  # symmetrised with one temporary: H + Hᵀ, halved in place
        W = W_dense.to(SOLVER_DTYPE, copy=True)
        dead = torch.diagonal(H) == 0
        if dead.any():  # features that never fire: their weights cannot matter; pin them
            H[dead, :] = 0
            H[:, dead] = 0
            H[dead, dead] = 1
            W[dead] = 0
        diag_mean = float(torch.diagonal(H).mean()) if p else 0.0
        shift = damping * diag_mean if damping > 0 else 0.0
        if damping > 0:
            H.diagonal().add_(shift)
        if cross is None:
            G = H @ W
        else:
            C = cross.to(SOLVER_DTYPE, copy=True)
            C[dead, :] = 0  # (its dead columns meet the zero rows of W)
            G = C @ W
        return cls(H=H, G=G, W_dense=W, group_size=group_size, k=k, damping=float(damping),
                   activations=activations, producer_weight=producer_weight, name=name,
                   G_is_HW=cross is None, blocks=blocks, diag_shift=shift)


def reconstruction_error(H_raw: Tensor, W: Tensor, W_dense: Tensor) -> tuple[float, float]:
    """½‖X(W − Ŵ)‖²_F and its ratio to ½‖XŴ‖²_F, from ``H_raw = XᵀX`` alone (no activations).

    H_raw: (p, p) undamped XᵀX of the inputs X: (rows, p) the error is measured on (calibration or
    held-out); W: (p, m) pruned, refit weights; W_dense: (p, m) dense weights Ŵ. float64 throughout.
    Returns (½ tr(ΔᵀHΔ) with Δ = W − Ŵ, that divided by ½ tr(ŴᵀHŴ); the ratio is NaN when the dense
    output energy is 0). On calibration inputs with damping 0 and G = HŴ, the error is
    ``Q(W) − Q(Ŵ)`` and the ratio ``(Q(W) − Q(Ŵ)) / (Q(0) − Q(Ŵ))`` (Q of :class:`LayerProblem`).
    """
    _check_square_symmetric("H_raw", H_raw)
    p = H_raw.shape[0]
    _check_matrix("W", W, rows=p)
    _check_matrix("W_dense", W_dense, rows=p, cols=W.shape[1])
    H = H_raw.to(SOLVER_DTYPE)
    D = W.to(device=H.device, dtype=SOLVER_DTYPE) - W_dense.to(device=H.device, dtype=SOLVER_DTYPE)
    Wd = W_dense.to(device=H.device, dtype=SOLVER_DTYPE)
    err = 0.5 * float((D * (H @ D)).sum())
    energy = 0.5 * float((Wd * (H @ Wd)).sum())
    return err, (err / energy if energy > 0 else float("nan"))
