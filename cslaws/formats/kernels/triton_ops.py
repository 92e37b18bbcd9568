"""The Triton kernels: one fused pass for (rotate ->) (sparsify ->) quantize (-> rotate back), its masked
backward, and a standalone fast Walsh-Hadamard transform.

A launch sees the tensor as `n_seg` contiguous segments of `SEG` values (a row, or a Hadamard/scale block),
padded to a power of two `BLOCK`; a program handles `ROWS` segments as one (ROWS, BLOCK) register tile.
Inside a segment, scale groups are `NG` runs of `GROUP` columns (`GROUP = BLOCK` when one group spans the
segment, with `GROUP_LEN` real values), Hadamard blocks are runs of `2^LOG_H` columns and N:M groups runs
of `M` columns. Everything is float32 inside; the input and output keep their dtype.

Numerics mirror the torch formats (`cslaws.formats.int`, `fp`, `quant`, `hadamard`, `sparse`) operation
by operation: IEEE division and square root (`div_rn`, `sqrt_rn`: plain `/` compiles to an approximate
division on GPUs), round-half-to-even written out by hand (the interpreter has no libdevice), powers of
two built from their bits, and launches with `enable_fp_fusion=False` so that no multiply-add is
contracted into an FMA the torch reference does not do. What differs is only the summation order of the
reductions (RMS, the Hadamard butterflies vs. torch's radix-16 matmuls): a few float32 ulps.

The gradient mask is bit-packed, `PACK` (8, or BLOCK when smaller) columns per byte.
"""

from __future__ import annotations

import triton
import triton.language as tl

# grid kinds
INT_MIDRISE: tl.constexpr = tl.constexpr(0)
INT_MIDTREAD: tl.constexpr = tl.constexpr(1)
FP: tl.constexpr = tl.constexpr(2)
MX: tl.constexpr = tl.constexpr(3)
NVFP4: tl.constexpr = tl.constexpr(4)
# scale statistics
STAT_RMS: tl.constexpr = tl.constexpr(0)
STAT_ABSMAX: tl.constexpr = tl.constexpr(1)
STAT_GIVEN: tl.constexpr = tl.constexpr(2)
# quantizer backward rules
BW_STE: tl.constexpr = tl.constexpr(0)
BW_CLIPPED: tl.constexpr = tl.constexpr(1)
BW_TRUST: tl.constexpr = tl.constexpr(2)
# where the keep-mask of a sparsifier comes from
SP_NONE: tl.constexpr = tl.constexpr(0)
SP_GIVEN: tl.constexpr = tl.constexpr(1)
SP_NM: tl.constexpr = tl.constexpr(2)
SP_THRESHOLD: tl.constexpr = tl.constexpr(3)
# sparsifier backward rules
SB_FORWARD: tl.constexpr = tl.constexpr(0)
SB_STE: tl.constexpr = tl.constexpr(1)
SB_RBBM: tl.constexpr = tl.constexpr(2)

TINY: tl.constexpr = tl.constexpr(1.1754943508222875e-38)  # smallest normal float32, the scale floor


@triton.jit
def _rne(t):
    """Round half to even, by hand: floor, then up when the fraction is above 1/2, or exactly 1/2 and odd."""
    f = tl.floor(t)
    d = t - f  # exact: t and floor(t) share the binade's spacing
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)


@triton.jit
def _exp2i(e):
    """2^e for int32 e in [-127, 127] built from its bits (2^-127 is the float32 subnormal 2^22 ulp)."""
    normal = ((e + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(e >= -126, normal, tl.full(e.shape, 1 << 22, tl.int32).to(tl.float32, bitcast=True))


@triton.jit
def _floor_log2(v):
    """floor(log2 |v|) of float32 `v` from its exponent field: exact for normals; zeros and subnormals give
    -127, which every caller clamps to a larger minimum exponent (or excludes, for MX's all-zero blocks)."""
    return ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def _fp_round(v, MBITS: tl.constexpr, EMIN: tl.constexpr, EMAX: tl.constexpr, MAXV: tl.constexpr):
    """Nearest value of the element grid (ties to even, saturating at +-MAXV), and the grid's local spacing."""
    e = tl.minimum(tl.maximum(_floor_log2(v), EMIN), EMAX)
    quantum = _exp2i(e - MBITS)
    q = _rne(tl.div_rn(v, quantum)) * quantum
    return tl.minimum(tl.maximum(q, -MAXV), MAXV), quantum


@triton.jit
def _to(v, ptr):
    """`v` converted to the element type of `ptr`; bf16 is rounded to nearest-even on the float32 bits
    first, as the GPU conversion does (the interpreter's own conversion truncates)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = v.to(tl.int32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
        v = bits.to(tl.float32, bitcast=True)
    return v.to(ptr.dtype.element_ty)


@triton.jit
def _fwht(x, ROWS: tl.constexpr, BLOCK: tl.constexpr, LOG_H: tl.constexpr, NORM: tl.constexpr):
    """Normalised Walsh-Hadamard transform of every run of 2^LOG_H columns of the tile: radix-2 butterflies
    (a, b) -> (a + b, a - b) at strides 1, 2, 4, ..., then one multiply by NORM = 2^(-LOG_H / 2)."""
    for i in tl.static_range(LOG_H):
        x = tl.reshape(x, (ROWS, BLOCK // (2 << i), 2, 1 << i))
        a, b = tl.split(tl.permute(x, (0, 1, 3, 2)))
        x = tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2))
    return tl.reshape(x, (ROWS, BLOCK)) * NORM


@triton.jit
def _group_sum(v, ROWS: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr):
    """Sum over each scale group, broadcast back to the tile."""
    s = tl.sum(tl.reshape(v, (ROWS, BLOCK // GROUP, GROUP)), axis=2)
    return tl.reshape(tl.broadcast_to(s[:, :, None], (ROWS, BLOCK // GROUP, GROUP)), (ROWS, BLOCK))


@triton.jit
def _group_max(v, ROWS: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr):
    """Maximum over each scale group, broadcast back to the tile."""
    s = tl.max(tl.reshape(v, (ROWS, BLOCK // GROUP, GROUP)), axis=2)
    return tl.reshape(tl.broadcast_to(s[:, :, None], (ROWS, BLOCK // GROUP, GROUP)), (ROWS, BLOCK))


@triton.jit
def _group_min(v, ROWS: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr):
    """Minimum over each run of GROUP columns, broadcast back to the tile."""
    s = tl.min(tl.reshape(v, (ROWS, BLOCK // GROUP, GROUP)), axis=2)
    return tl.reshape(tl.broadcast_to(s[:, :, None], (ROWS, BLOCK // GROUP, GROUP)), (ROWS, BLOCK))


@triton.jit
def _nm_keep(a, N: tl.constexpr, M: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """N:M keep-mask of magnitudes `a`: a value survives when fewer than N of its group beat it, where a
    beats b if larger, or equal and at a lower index (the tie rule of `cslaws.formats.sparse.nm_mask`)."""
    g = tl.reshape(a, (ROWS, BLOCK // M, M))
    idx = tl.arange(0, M)[None, None, :]
    beaten = tl.zeros((ROWS, BLOCK // M, M), tl.int32)
    for j in tl.static_range(M):
        aj = tl.sum(tl.where(idx == j, g, 0.0), axis=2)[:, :, None]
        beaten += ((aj > g) | ((aj == g) & (idx > j))).to(tl.int32)
    return tl.reshape(beaten < N, (ROWS, BLOCK))


@triton.jit
def _pack(m, ROWS: tl.constexpr, BLOCK: tl.constexpr, PACK: tl.constexpr):
    """Pack a boolean tile into bytes, bit j of byte c holding column c * PACK + j."""
    bits = tl.reshape(m.to(tl.int32), (ROWS, BLOCK // PACK, PACK))
    return tl.sum(bits << tl.arange(0, PACK)[None, None, :], axis=2).to(tl.uint8)


@triton.jit
def _unpack(byte, ROWS: tl.constexpr, BLOCK: tl.constexpr, PACK: tl.constexpr):
    bits = (byte.to(tl.int32)[:, :, None] >> tl.arange(0, PACK)[None, None, :]) & 1
    return tl.reshape(bits, (ROWS, BLOCK)) != 0


@triton.jit
def quantize_fwd_kernel(
    x_ptr,
    q_ptr,
    bits_ptr,
    keep_ptr,
    given_ptr,
    thr_ptr,
    need_ptr,
    n_seg,
    SEG: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    PACK: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_LEN: tl.constexpr,
    SQRT_N: tl.constexpr,
    LOG_H: tl.constexpr,
    NORM: tl.constexpr,
    ROT_IN: tl.constexpr,
    ROT_OUT: tl.constexpr,
    KIND: tl.constexpr,
    STAT: tl.constexpr,
    MULT: tl.constexpr,
    HALF: tl.constexpr,
    MBITS: tl.constexpr,
    EMIN: tl.constexpr,
    EMAX: tl.constexpr,
    MAXV: tl.constexpr,
    BACKWARD: tl.constexpr,
    TRUST: tl.constexpr,
    CLIP_MULT: tl.constexpr,
    OUTER_ROW: tl.constexpr,
    SPARSE: tl.constexpr,
    NM_N: tl.constexpr,
    NM_M: tl.constexpr,
    SPARSE_BW: tl.constexpr,
    TP_FACTOR: tl.constexpr,
    NEED_MASK: tl.constexpr,
):
    """One pass: load, (rotate,) (choose survivors,) scale, round, mask, (rotate back,) store.

    Pointers: input, output, packed mask, given keep-mask (SP_GIVEN), per-tensor statistic (STAT_GIVEN;
    NVFP4's outer scale, one per segment when OUTER_ROW), per-row top-k threshold and tie budget (SP_THRESHOLD). Constants: tile geometry
    (see the module docstring); Hadamard (LOG_H, NORM, ROT_IN, ROT_OUT); grid KIND with its scale STAT,
    int multiplier MULT and half level count HALF, element MBITS/EMIN/EMAX/MAXV; quantizer BACKWARD rule with
    TRUST and CLIP_MULT; SPARSE source with NM_N/NM_M, sparsifier backward SPARSE_BW and RBBM's TP_FACTOR.
    """
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    inside = (rows[:, None] < n_seg) & (cols[None, :] < SEG)
    offs = rows[:, None].to(tl.int64) * SEG + cols[None, :]
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if ROT_IN:
        x = _fwht(x, ROWS, BLOCK, LOG_H, NORM)
    a = tl.abs(x)

    # survivors of the sparsifier (all real values when there is none)
    if SPARSE == SP_GIVEN:
        keep = (tl.load(keep_ptr + offs, mask=inside, other=0) != 0) & inside
    elif SPARSE == SP_NM:
        keep = _nm_keep(a, NM_N, NM_M, ROWS, BLOCK) & inside
    elif SPARSE == SP_THRESHOLD:
        # per-row top-k from its k-th largest magnitude t: all above t, and ties in index order up to `need`
        thr = tl.load(thr_ptr + rows, mask=rows < n_seg, other=0.0)[:, None]
        need = tl.load(need_ptr + rows, mask=rows < n_seg, other=0)[:, None]
        tie = (a == thr) & inside
        keep = ((a > thr) & inside) | (tie & (tl.cumsum(tie.to(tl.int32), axis=1) <= need))
    else:
        keep = inside
    keepf = keep.to(tl.float32)

    # scale statistic of each group
    if STAT == STAT_RMS:
        if SPARSE == SP_NONE:
            stat = tl.div_rn(tl.sqrt_rn(_group_sum(x * x, ROWS, BLOCK, GROUP)), SQRT_N)
        else:
            count = tl.maximum(_group_sum(keepf, ROWS, BLOCK, GROUP), 1.0)
            stat = tl.sqrt_rn(tl.div_rn(_group_sum(x * x * keepf, ROWS, BLOCK, GROUP), count))
    elif STAT == STAT_ABSMAX:
        stat = _group_max(a * keepf, ROWS, BLOCK, GROUP)
    else:
        stat = tl.load(given_ptr)

    # round to the grid; `step` is the local spacing (trust rule), `clip` the grid's edge (clipped rule)
    if KIND == INT_MIDRISE:
        step = tl.maximum(stat * MULT, TINY)
        t = tl.minimum(tl.maximum(tl.floor(tl.div_rn(x, step)), -HALF), HALF - 1.0)
        q = (t + 0.5) * step
        clip = step * CLIP_MULT
    elif KIND == INT_MIDTREAD:
        step = tl.maximum(stat * MULT, TINY)
        q = tl.minimum(tl.maximum(_rne(tl.div_rn(x, step)), -HALF), HALF) * step
        clip = step * CLIP_MULT
    elif KIND == FP:
        scale = tl.maximum(tl.div_rn(stat, MAXV), TINY)
        v, quantum = _fp_round(tl.div_rn(x, scale), MBITS, EMIN, EMAX, MAXV)
        q = v * scale
        step = quantum * scale
        clip = tl.maximum(scale * MAXV, stat)  # the absmax itself: scale * MAXV can round one ulp below it
    elif KIND == MX:
        xexp = tl.minimum(tl.maximum(tl.where(stat > 0.0, _floor_log2(stat) - EMAX, -127), -127), 127)
        scale = _exp2i(xexp)
        v, quantum = _fp_round(tl.div_rn(x, scale), MBITS, EMIN, EMAX, MAXV)
        q = v * scale
        step = quantum * scale
        clip = scale * MAXV
    else:  # NVFP4: E4M3 block scale of absmax / (6 s_t), times the outer s_t in `given_ptr`
        if OUTER_ROW:  # one s_t per row, laid out per segment
            s_t = tl.load(given_ptr + rows, mask=rows < n_seg, other=1.0)[:, None]
        else:
            s_t = tl.load(given_ptr)
        s_b, _ = _fp_round(tl.div_rn(stat, 6.0 * s_t), 3, -6, 8, 448.0)
        scale = s_b * s_t
        v, quantum = _fp_round(tl.div_rn(x, tl.where(scale > 0.0, scale, 1.0)), 1, 0, 2, 6.0)
        q = v * scale
        step = quantum * scale
        clip = scale * 6.0

    if NEED_MASK:
        if BACKWARD == BW_TRUST:
            m = tl.abs(q - x) <= step * TRUST
        elif BACKWARD == BW_CLIPPED:
            m = a <= clip
        else:
            m = tl.full((ROWS, BLOCK), 1, tl.int1)
        if SPARSE != SP_NONE:
            m = m | (~keep)  # pruned values pass the quantizer's gradient through to the sparsifier's rule
        if SPARSE == SP_NM or SPARSE == SP_THRESHOLD:
            if SPARSE_BW == SB_FORWARD:
                m = m & keep
            elif SPARSE_BW == SB_RBBM:
                # no gradient strictly between T_k (smallest survivor of the N:M group / row) and T_p
                if SPARSE == SP_NM:
                    t_k = _group_min(tl.where(keep, a, float("inf")), ROWS, BLOCK, NM_M)
                else:
                    t_k = thr
                # T_p = RMS(row) Phi^-1(0.5 + p): the whole row is the segment here
                t_p = tl.sqrt_rn(tl.div_rn(tl.sum(x * x, axis=1), SEG * 1.0))[:, None] * TP_FACTOR
                lo = tl.minimum(t_k, t_p)
                hi = tl.maximum(t_k, t_p)
                m = m & ~((a > lo) & (a < hi))
        m = m & inside
        nbytes: tl.constexpr = BLOCK // PACK
        bcols = tl.arange(0, nbytes)
        boffs = rows[:, None].to(tl.int64) * nbytes + bcols[None, :]
        tl.store(bits_ptr + boffs, _pack(m, ROWS, BLOCK, PACK), mask=(rows[:, None] < n_seg))

    if SPARSE != SP_NONE:
        q = q * keepf
    if ROT_OUT:
        q = _fwht(q, ROWS, BLOCK, LOG_H, NORM)
    tl.store(q_ptr + offs, _to(q, q_ptr), mask=inside)


@triton.jit
def masked_bwd_kernel(
    g_ptr,
    out_ptr,
    bits_ptr,
    n_seg,
    SEG: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    PACK: tl.constexpr,
    LOG_H: tl.constexpr,
    NORM: tl.constexpr,
    ROT_IN: tl.constexpr,
    ROT_OUT: tl.constexpr,
):
    """Backward of `quantize_fwd_kernel`: (rotate the gradient,) keep it where the mask bit is set, (rotate)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    inside = (rows[:, None] < n_seg) & (cols[None, :] < SEG)
    offs = rows[:, None].to(tl.int64) * SEG + cols[None, :]
    g = tl.load(g_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    nbytes: tl.constexpr = BLOCK // PACK
    boffs = rows[:, None].to(tl.int64) * nbytes + tl.arange(0, nbytes)[None, :]
    m = _unpack(tl.load(bits_ptr + boffs, mask=rows[:, None] < n_seg, other=0), ROWS, BLOCK, PACK)
    if ROT_OUT:
        g = _fwht(g, ROWS, BLOCK, LOG_H, NORM)
    g = tl.where(m, g, 0.0)
    if ROT_IN:
        g = _fwht(g, ROWS, BLOCK, LOG_H, NORM)
    tl.store(out_ptr + offs, _to(g, out_ptr), mask=inside)


@triton.jit
def fwht_kernel(
    x_ptr,
    y_ptr,
    n_seg,
    SEG: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    LOG_H: tl.constexpr,
    NORM: tl.constexpr,
):
    """Standalone normalised Walsh-Hadamard transform on blocks of 2^LOG_H along each segment, in float32."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    inside = (rows[:, None] < n_seg) & (cols[None, :] < SEG)
    offs = rows[:, None].to(tl.int64) * SEG + cols[None, :]
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    y = _fwht(x, ROWS, BLOCK, LOG_H, NORM)
    tl.store(y_ptr + offs, _to(y, y_ptr), mask=inside)
