"""Fused fake quantization on Triton: what a format asks for (`QuantPlan`, `Rotation`, `Sparsity`), the
launch geometry, and the autograd wrapper whose backward is the masked (and rotated) gradient.

Forward, in one kernel launch reading `x` once: optional Hadamard rotation on blocks of `b` (QuEST,
Panferov et al. 2025 sec. 3), optional N:M or per-row top-k sparsification (survivors chosen in the kernel,
scales over the survivors as in `Format.compress_sparse`), quantization to an INT / FP / MX / NVFP4 grid
with per-row or per-group scales computed in the kernel, the gradient mask of the format's backward rule
(trust, clipped, straight-through; combined with the sparsifier's forward / straight-through / RBBM mask),
stored bit-packed, and optional rotation back. Backward, in one launch: (rotate,) mask, (rotate).

Per-tensor statistics (per-tensor scales, NVFP4's tensor scale) and per-row top-k thresholds need the
whole tensor / row before the first value can be rounded: they are computed by torch reductions over the
(rotated) input before the launch, with the same formulas as the torch formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from cslaws.formats.kernels import interpreting
from cslaws.formats.kernels import triton_ops as ops
from cslaws.formats.sparse import kth_largest

TINY = torch.finfo(torch.float32).tiny
KINDS = {"int": None, "fp": ops.FP, "mx": ops.MX, "nvfp4": ops.NVFP4}
STATS = {"rms": ops.STAT_RMS, "absmax": ops.STAT_ABSMAX}
QUANT_BACKWARDS = {"ste": ops.BW_STE, "clipped": ops.BW_CLIPPED, "trust": ops.BW_TRUST}
SPARSE_BACKWARDS = {"forward": ops.SB_FORWARD, "ste": ops.SB_STE, "rbbm": ops.SB_RBBM}
#: Elements per program: a few thousand on a GPU (registers), as many as fit under the interpreter, where
#: every program costs a round of numpy calls.
TILE_GPU = 4096
TILE_INTERPRETER = 1 << 16
#: No multiply-add contraction: the torch reference rounds every product on its own.
COMPILE_OPTIONS = {"enable_fp_fusion": False}


def exact_div(t: Tensor, divisor: float) -> Tensor:
    """`t / divisor` as an IEEE float32 division on every device, in place. A CUDA tensor divided by a
    Python number is multiplied by the number's reciprocal instead (rounded twice), which the Triton
    kernels (`div_rn`) and the CPU do not do; a divisor on the tensor's device is divided by."""
    return t.div_(torch.full((), divisor, dtype=t.dtype, device=t.device))



@dataclass(frozen=True)
class Sparsity:
    """Sparsify before quantizing, survivors chosen in the kernel.

    `kind="nm"`: the `n` largest magnitudes of every `m` consecutive values; `kind="row"`: the `k` largest
    of every row (ties to the lowest index). `backward`: the sparsifier's gradient mask; RBBM needs
    `tp_factor = Phi^-1(0.5 + p)`.
    """

    kind: Literal["nm", "row"]
    backward: Literal["forward", "ste", "rbbm"]
    n: int = 0
    m: int = 1
    k: int = 0
    tp_factor: float = math.nan

    def __post_init__(self) -> None:
        if self.kind not in ("nm", "row"):
            raise ValueError(f"unknown kernel sparsity {self.kind!r}; allowed: nm, row")
        if self.backward not in SPARSE_BACKWARDS:
            raise ValueError(f"unknown sparse backward {self.backward!r}; allowed: {', '.join(SPARSE_BACKWARDS)}")
        if self.kind == "nm" and (self.m & (self.m - 1) or not 1 <= self.n <= self.m):
            raise ValueError(f"the N:M kernel needs 1 <= N <= M with M a power of two, got N={self.n}, M={self.m}")


#: NVFP4's outer scale: one float32 per tensor or per row (`cslaws.formats.fp.NVFP4`).
OuterScale = Literal["tensor", "row"]
OUTER_SCALES: tuple[str, ...] = ("tensor", "row")


@dataclass(frozen=True)
class QuantPlan:
    """The quantizer: grid kind, scale statistic and granularity, backward rule.

    `kind="int"`: `levels` cell-centred levels, `step = mult * stat` with `stat` the group's RMS or absmax
    (mid-rise when `levels` is even, mid-tread when odd). `kind="fp"`: absmax scale onto the element
    grid `element = (mbits, emin, emax, max)`. `kind="mx"`: E8M0 block scale. `kind="nvfp4"`: E4M3 block
    scale times a float32 outer scale per tensor or per row (`outer`), E2M1 elements.
    """

    kind: Literal["int", "fp", "mx", "nvfp4"]
    granularity: Literal["tensor", "row", "group"]
    group_size: int
    backward: Literal["ste", "clipped", "trust"]
    trust: float
    levels: int = 0
    stat: Literal["rms", "absmax"] = "absmax"
    mult: float = 1.0
    element: tuple[int, int, int, float] = (1, 0, 2, 6.0)
    sparsity: Sparsity | None = None
    outer: OuterScale = "tensor"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kernel grid {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.granularity not in ("tensor", "row", "group"):
            raise ValueError(f"unknown granularity {self.granularity!r}; allowed: tensor, row, group")
        if self.backward not in QUANT_BACKWARDS:
            raise ValueError(f"unknown backward rule {self.backward!r}; allowed: {', '.join(QUANT_BACKWARDS)}")
        if self.stat not in STATS:
            raise ValueError(f"unknown scale statistic {self.stat!r}; allowed: {', '.join(STATS)}")
        if self.kind == "int" and self.levels < 2:
            raise ValueError(f"an int grid needs at least 2 levels, got {self.levels}")
        if self.outer not in OUTER_SCALES:
            raise ValueError(f"unknown NVFP4 outer scale {self.outer!r}; allowed: {', '.join(OUTER_SCALES)}")
        if self.kind in ("mx", "nvfp4") and self.granularity != "group":
            raise ValueError(f"{self.kind} scales are per block: granularity must be 'group', got {self.granularity!r}")


@dataclass(frozen=True)
class Rotation:
    """Hadamard rotation on blocks of `block` (a power of two dividing the row); `back` rotates back."""

    block: int
    back: bool


def sparsity_plan(sparsifier: Any, row_len: int) -> Sparsity | None:
    """The in-kernel form of a sparsifier of `cslaws.formats.sparse`: N:M with M a power of two, or per-row
    top-k magnitude (`Magnitude(per_row=True)`, `TopK`) at its current sparsity; None for the others
    (per-tensor magnitude needs the whole tensor's k-th value first)."""
    tp = getattr(sparsifier, "_tp_factor", math.nan)
    if sparsifier.name == "nm" and not sparsifier.m & (sparsifier.m - 1):
        return Sparsity("nm", sparsifier.backward, n=sparsifier.n, m=sparsifier.m, tp_factor=tp)
    if sparsifier.name in ("magnitude", "topk") and sparsifier.per_row:
        keep = row_len - math.floor(sparsifier.current_sparsity * row_len + 0.5)  # `sparse.kept_count`
        return Sparsity("row", sparsifier.backward, k=keep, tp_factor=tp)
    return None


def needs_tensor_statistic(plan: QuantPlan) -> bool:
    """Per-tensor scales (and NVFP4's outer scale, per tensor or per row: a row spans many segments) need
    the survivors before the launch."""
    return plan.granularity == "tensor" or plan.kind == "nvfp4"


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class Geometry:
    """How a (rows, row_len) tensor is cut into segments and register tiles (see `triton_ops`)."""

    seg: int
    block: int
    rows: int
    pack: int
    group: int
    group_len: int
    log_h: int
    n_seg: int

    @property
    def grid(self) -> tuple[int]:
        return (-(-self.n_seg // self.rows),)

    @property
    def num_warps(self) -> int:
        """About 16 values per thread and tensor (4 warps up to 2048 values, 16 for whole rows of 8192)."""
        return min(16, max(4, self.rows * self.block // 512))


def geometry(numel: int, row_len: int, group: int, rotate: int, nm: int, whole_row: bool) -> Geometry:
    """Segments that hold whole scale groups, Hadamard blocks and N:M groups (whole rows when asked)."""
    seg = row_len if whole_row else max(group, rotate, nm)
    if seg % group or seg % max(rotate, 1) or seg % nm or row_len % seg:
        raise ValueError(
            f"the fused kernel needs the scale group ({group}), Hadamard block ({rotate}) and N:M group ({nm}) "
            f"to nest inside one segment of the row of {row_len}; got segment {seg}"
        )
    block = max(_pow2(seg), 2)
    if group != seg and group & (group - 1):
        raise ValueError(
            f"a segment of {seg} values holding several scale groups needs a power-of-two group, got {group}"
        )
    n_seg = numel // seg
    target = TILE_INTERPRETER if interpreting() else TILE_GPU
    rows = max(1, min(target // block, _pow2(n_seg)))
    return Geometry(
        seg=seg,
        block=block,
        rows=rows,
        pack=min(8, block),
        group=block if group == seg else group,
        group_len=group,
        log_h=max(rotate, 1).bit_length() - 1,
        n_seg=n_seg,
    )


def fwht(x: Tensor, block: int) -> Tensor:
    """Normalised Walsh-Hadamard transform on blocks of `block` along the last dim, float32 out."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    g = geometry(x2.numel(), x2.shape[-1], block, block, 1, whole_row=False)
    y = torch.empty(x2.shape, dtype=torch.float32, device=x.device)
    ops.fwht_kernel[g.grid](
        x2,
        y,
        g.n_seg,
        SEG=g.seg,
        BLOCK=g.block,
        ROWS=g.rows,
        LOG_H=g.log_h,
        NORM=block**-0.5,
        num_warps=g.num_warps,
        **COMPILE_OPTIONS,
    )
    return y.reshape(x.shape)


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, block: int) -> Tensor:  # type: ignore[override]
        ctx.block = block
        return fwht(x, block)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return fwht(grad, ctx.block), None  # H is symmetric and orthogonal


def rotate(x: Tensor, block: int) -> Tensor:
    """`fwht` with autograd (float32 out, like `cslaws.formats.hadamard.rotate`)."""
    return _Rotate.apply(x, block)


def _row_topk(a: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-row k-th largest magnitude and how many of the values equal to it survive (lowest index first)."""
    if k <= 0:
        return torch.full(a.shape[:-1], math.inf, device=a.device), torch.zeros(
            a.shape[:-1], dtype=torch.int32, device=a.device
        )
    t = kth_largest(a, k, dim=-1)  # a `topk`: `kthvalue` is 40-200x slower on GPUs
    need = k - (a > t).sum(-1)
    return t[:, 0].float().contiguous(), need.to(torch.int32).contiguous()


def _tensor_stat(y: Tensor, plan: QuantPlan, keep: Tensor | None) -> Tensor:
    """Per-tensor statistic of `cslaws.formats.quant` (RMS or absmax, over the survivors when sparse)."""
    g = y.float().reshape(1, -1)
    if plan.stat == "rms" and plan.kind == "int":
        if keep is None:
            return exact_div(torch.linalg.vector_norm(g, dim=-1, keepdim=True), math.sqrt(g.shape[-1])).reshape(1)
        k = keep.reshape(1, -1)
        return (g.square() * k).sum(-1).div_(k.sum(-1).clamp_min_(1)).sqrt_().reshape(1)
    return _absmax_stat(y, "tensor", keep)


def _absmax_stat(y: Tensor, outer: str, keep: Tensor | None) -> Tensor:
    """Absmax (over the survivors when sparse): one for the tensor, or one per row of `y`."""
    a = y.float().abs() if keep is None else y.float().abs() * keep.reshape(y.shape)
    return a.amax().reshape(1) if outer == "tensor" else a.amax(-1)


def _forward(
    x2: Tensor, dtype: torch.dtype, geo: Geometry, launch: dict[str, Any], need_mask: bool
) -> tuple[Tensor, Tensor | None]:
    q = torch.empty(x2.shape, dtype=dtype, device=x2.device)
    bits = torch.empty((geo.n_seg, geo.block // geo.pack), dtype=torch.uint8, device=x2.device) if need_mask else None
    ops.quantize_fwd_kernel[geo.grid](
        x2,
        q,
        q if bits is None else bits,
        n_seg=geo.n_seg,
        SEG=geo.seg,
        BLOCK=geo.block,
        ROWS=geo.rows,
        PACK=geo.pack,
        GROUP=geo.group,
        GROUP_LEN=geo.group_len,
        SQRT_N=math.sqrt(geo.group_len),
        LOG_H=geo.log_h,
        NORM=(1 << geo.log_h) ** -0.5,
        NEED_MASK=need_mask,
        num_warps=geo.num_warps,
        **COMPILE_OPTIONS,
        **launch,
    )
    return q, bits


def _backward(grad: Tensor, bits: Tensor, geo: Geometry, rot_in: bool, rot_out: bool) -> Tensor:
    grad2 = grad.contiguous()
    out = torch.empty_like(grad2)
    ops.masked_bwd_kernel[geo.grid](
        grad2,
        out,
        bits,
        geo.n_seg,
        SEG=geo.seg,
        BLOCK=geo.block,
        ROWS=geo.rows,
        PACK=geo.pack,
        LOG_H=geo.log_h,
        NORM=(1 << geo.log_h) ** -0.5,
        ROT_IN=rot_in,
        ROT_OUT=rot_out,
        num_warps=geo.num_warps,
        **COMPILE_OPTIONS,
    )
    return out


class _Fused(torch.autograd.Function):
    """Forward: the fused kernel on `src` (`x`, or `x` already rotated); backward: the masked kernel."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, src: Tensor, geo: Geometry, launch: dict[str, Any], rot: tuple[bool, bool]
    ) -> Tensor:  # type: ignore[override]
        q, bits = _forward(src, x.dtype, geo, launch, need_mask=True)
        ctx.geo, ctx.rot = geo, rot
        ctx.save_for_backward(bits)
        return q.reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        (bits,) = ctx.saved_tensors
        return _backward(grad, bits, ctx.geo, *ctx.rot), None, None, None, None


class _Straight(torch.autograd.Function):
    """Forward: the fused kernel without a mask; backward: the gradient unchanged (straight-through)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, src: Tensor, geo: Geometry, launch: dict[str, Any]) -> Tensor:  # type: ignore[override]
        return _forward(src, x.dtype, geo, launch, need_mask=False)[0].reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        return grad, None, None, None


def _quantizer_constants(plan: QuantPlan) -> dict[str, Any]:
    """The kernel's compile-time constants for the grid, its scale and its backward rule."""
    if plan.kind == "int":
        even = plan.levels % 2 == 0
        kind, half = (ops.INT_MIDRISE, plan.levels / 2) if even else (ops.INT_MIDTREAD, (plan.levels - 1) / 2)
    else:
        kind, half = KINDS[plan.kind], 0.0
    stat = ops.STAT_GIVEN if plan.granularity == "tensor" else STATS[plan.stat if plan.kind == "int" else "absmax"]
    mbits, emin, emax, maxv = plan.element
    return dict(
        KIND=kind,
        STAT=stat,
        MULT=plan.mult,
        HALF=half,
        MBITS=mbits,
        EMIN=emin,
        EMAX=emax,
        MAXV=maxv,
        BACKWARD=QUANT_BACKWARDS[plan.backward],
        TRUST=plan.trust,
        CLIP_MULT=plan.levels / 2,
        OUTER_ROW=plan.outer == "row",
    )


def _sparsity_constants(sparsity: Sparsity | None) -> dict[str, Any]:
    """The kernel's compile-time constants for in-kernel N:M / top-k survivors and their backward mask."""
    if sparsity is None:
        return dict(NM_N=0, NM_M=1, SPARSE_BW=ops.SB_STE, TP_FACTOR=0.0)
    return dict(
        NM_N=sparsity.n,
        NM_M=sparsity.m if sparsity.kind == "nm" else 1,
        SPARSE_BW=SPARSE_BACKWARDS[sparsity.backward],
        TP_FACTOR=sparsity.tp_factor if sparsity.backward == "rbbm" else 0.0,
    )


def fake_quantize(
    x: Tensor,
    plan: QuantPlan,
    rotation: Rotation | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """`x` through (rotation ->) (sparsifier ->) quantizer (-> rotation back), with the masked backward.

    Output dtype: that of `x`. `keep` (bool, shape of `x`): survivors chosen outside,
    as `Format.compress_sparse`; exclusive with `plan.sparsity`.
    """
    sparsity = plan.sparsity
    if keep is not None and sparsity is not None:
        raise ValueError("give either the survivors `keep` or a plan with an in-kernel `sparsity`, not both")
    if keep is not None and (keep.shape != x.shape or keep.dtype != torch.bool):
        raise ValueError(
            f"keep must be a bool tensor of the shape of x {tuple(x.shape)}, got {keep.dtype} {tuple(keep.shape)}"
        )
    row_len = x.shape[-1]
    x2 = x.detach().reshape(-1, row_len).contiguous()
    if plan.granularity == "group" and row_len % plan.group_size:
        raise ValueError(
            f"group_size {plan.group_size} does not divide the row length {row_len} (last dim of {tuple(x.shape)})"
        )
    group = plan.group_size if plan.granularity == "group" else row_len
    h = rotation.block if rotation is not None else 0
    if h and (h & (h - 1) or row_len % h):
        raise ValueError(f"Hadamard block {h} must be a power of two dividing the row length {row_len}")
    per_tensor = needs_tensor_statistic(plan)
    if per_tensor and sparsity is not None:
        raise ValueError(
            f"{plan.kind} with {plan.granularity} scales needs a per-tensor statistic of the survivors before the "
            "launch; choose the survivors outside (pass `keep`) for this combination"
        )
    whole_row = plan.granularity != "group" or (
        sparsity is not None and (sparsity.kind == "row" or sparsity.backward == "rbbm")
    )
    nm = sparsity.m if sparsity is not None and sparsity.kind == "nm" else 1
    geo = geometry(x2.numel(), row_len, group, h, nm, whole_row)

    # statistics that need the whole tensor or row come first, on the rotated values when rotating
    pre_rotate = bool(h) and (per_tensor or (sparsity is not None and sparsity.kind == "row"))
    src = fwht(x2, h) if pre_rotate else x2
    dummy = torch.zeros(1, dtype=torch.float32, device=x.device)
    given, thr, need = dummy, dummy, dummy.to(torch.int32)
    if plan.granularity == "tensor":
        given = _tensor_stat(src, plan, keep)
    if plan.kind == "nvfp4":
        given = exact_div(_absmax_stat(src, plan.outer, keep), 6.0 * 448.0).clamp_min_(TINY)
        if plan.outer == "row":
            given = given.repeat_interleave(row_len // geo.seg)  # the kernel reads one per segment
    if sparsity is not None and sparsity.kind == "row":
        thr, need = _row_topk(src.abs(), sparsity.k)

    sparse_code = (
        ops.SP_GIVEN
        if keep is not None
        else ops.SP_NONE
        if sparsity is None
        else (ops.SP_NM if sparsity.kind == "nm" else ops.SP_THRESHOLD)
    )
    rot_out = rotation is not None and rotation.back
    launch: dict[str, Any] = dict(
        keep_ptr=keep.reshape(-1).contiguous().view(torch.uint8) if keep is not None else dummy,
        given_ptr=given,
        thr_ptr=thr,
        need_ptr=need,
        ROT_IN=bool(h) and not pre_rotate,
        ROT_OUT=rot_out,
        SPARSE=sparse_code,
        **_quantizer_constants(plan),
        **_sparsity_constants(sparsity),
    )
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _forward(src, x.dtype, geo, launch, need_mask=False)[0].reshape(x.shape)
    if plan.backward == "ste" and sparse_code == ops.SP_NONE and not h:
        return _Straight.apply(x, src, geo, launch)
    return _Fused.apply(x, src, geo, launch, (bool(h), rot_out))
