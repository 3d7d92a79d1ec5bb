"""JPEG round trip on the accelerator: libjpeg-turbo's arithmetic, batched and jittable.

``jpeg_batch(x, quality)`` encodes and decodes a batch of RGB patches the way Pillow's
``Image.save(buf, "JPEG", quality=q)`` followed by ``Image.open(buf)`` does (libjpeg-turbo,
baseline, standard tables scaled by ``q``, 4:2:0 chroma, islow DCT, fancy upsampling), in
int32 arithmetic that follows libjpeg's integer code step by step, so the result is
Pillow's bit for bit (``tests/test_jpeg_device.py`` measures it). No float arithmetic at
all, so no float64 is needed (TPU) and no platform rounding differences arise. The steps,
each named after the libjpeg file it follows:

- colour conversion, RGB -> YCbCr (``jccolor.c``): 16-bit fixed point, ``ONE_HALF``
  rounding, ``CBCR_OFFSET``;
- edge expansion and chroma downsampling (``jcprepct.c``, ``jcsample.c``): rows are
  padded to an even count, columns to the 16-pixel MCU width by repeating the last one;
  ``h2v2_downsample`` averages 2 x 2 with the bias alternating 1, 2 along a row; the
  downsampled planes are padded to whole blocks by repeating their last row;
- forward DCT (``jfdctint.c``, "islow"): the integer butterflies, ``CONST_BITS`` 13,
  ``PASS1_BITS`` 2, on the samples minus 128;
- quantisation (``jcdctmgr.c``): divide by ``8 * table`` rounding half away from zero,
  by libjpeg-turbo's reciprocal multiply and shift; tables from ``jcparam.c``
  (``jpeg_quality_scaling``, ``jpeg_add_quant_table`` with ``force_baseline``);
- inverse DCT (``jidctint.c``, "islow") of the dequantised coefficients, + 128, clamped;
- chroma upsampling (``jdsample.c`` ``h2v2_fancy_upsample``, what libjpeg-turbo uses
  when fancy upsampling is on, Pillow's default; the merged upsampler of ``jdmerge.c``
  is used only with it off): a 3/4, 1/4 triangle filter vertically then horizontally
  with the rounding biases 8 and 7, the image edges repeated (pixel replication when
  the chroma planes are under 3 samples wide, images under 5 pixels wide, as there);
- colour conversion, YCbCr -> RGB (``jdcolor.c``): the fixed-point tables, clamped.

The entropy coding is lossless and is skipped. Every patch is coded on its own block
grid, as Pillow codes a crop on its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------- tables

# jcparam.c's std_luminance_quant_tbl / std_chrominance_quant_tbl (JPEG Annex K),
# natural (row-major) order.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
_STD_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99], dtype=np.int64)


def quant_table(quality: int, chroma: bool = False) -> np.ndarray:
    """The quantisation table libjpeg writes at ``quality`` (clipped to 1..100).

    ``(8, 8) int32``, values 1..255, natural order: ``jpeg_quality_scaling`` (5000 / q
    below 50, 200 - 2 q from 50) and ``jpeg_add_quant_table`` with ``force_baseline``.
    """
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = _STD_CHROMA if chroma else _STD_LUMA
    return np.clip((base * scale + 50) // 100, 1, 255).astype(np.int32).reshape(8, 8)


def divisors(table: np.ndarray) -> np.ndarray:
    """libjpeg-turbo's quantisation divisors for ``table (8, 8)`` (``jcdctmgr.c``
    ``compute_reciprocal`` of ``8 * table``, the islow DCT's scale).

    ``(4, 8, 8) int32``: the table, the reciprocal, the correction (rounding) and the
    shift, such that ``((|c| + correction) * reciprocal) >> shift`` is ``|c| / (8 *
    table)`` rounded half up (for the islow DCT's |c| < 2^14; libjpeg-turbo's SIMD
    quantiser computes the same with 16-bit multiplies).
    """
    out = np.zeros((4, 64), dtype=np.int64)
    for i, t in enumerate(np.asarray(table).ravel()):
        d = 8 * int(t)
        b = d.bit_length() - 1          # flss(divisor) - 1
        r = 16 + b
        fq, fr = divmod(1 << r, d)
        c = d // 2
        if fr == 0:                     # power of two
            fq >>= 1
            r -= 1
        elif fr <= d // 2:              # fraction under one half: round down, correct up
            c += 1
        else:
            fq += 1
        out[:, i] = (t, fq, c, r)
    return out.astype(np.int32).reshape(4, 8, 8)


# (100, 4, 8, 8): row q - 1 is quality q's ``divisors``; indexed by the traced quality.
_LUMA_DIVISORS = np.stack([divisors(quant_table(q)) for q in range(1, 101)])
_CHROMA_DIVISORS = np.stack([divisors(quant_table(q, chroma=True)) for q in range(1, 101)])

# --------------------------------------------------------------------------- integer DCT

_CONST_BITS = 13
_PASS1_BITS = 2
# jfdctint.c / jidctint.c: FIX(x) = round(x * 2^13)
_F0_298 = 2446
_F0_390 = 3196
_F0_541 = 4433
_F0_765 = 6270
_F0_899 = 7373
_F1_175 = 9633
_F1_501 = 12299
_F1_847 = 15137
_F1_961 = 16069
_F2_053 = 16819
_F2_562 = 20995
_F3_072 = 25172


def _descale(x: jax.Array, n: int) -> jax.Array:
    """libjpeg's ``DESCALE``: ``x / 2^n`` rounded half up (arithmetic shift)."""
    return (x + (1 << (n - 1))) >> n


def _odd_part(t4, t5, t6, t7):
    """The odd part shared by ``jfdctint.c`` and ``jidctint.c`` (figure 8 of Loeffler et al.).

    Inputs in the forward DCT's naming (``tmp4..tmp7``); returns the four sums that
    become outputs 7, 5, 3, 1 (forward) or the ``tmp0..tmp3`` odd terms (inverse).
    """
    z1 = t4 + t7
    z2 = t5 + t6
    z3 = t4 + t6
    z4 = t5 + t7
    z5 = (z3 + z4) * _F1_175
    t4 = t4 * _F0_298
    t5 = t5 * _F2_053
    t6 = t6 * _F3_072
    t7 = t7 * _F1_501
    z1 = z1 * -_F0_899
    z2 = z2 * -_F2_562
    z3 = z3 * -_F1_961 + z5
    z4 = z4 * -_F0_390 + z5
    return t4 + z1 + z3, t5 + z2 + z4, t6 + z2 + z3, t7 + z1 + z4


def _fdct_1d(v: list[jax.Array], shift: int, even_shift: int) -> list[jax.Array]:
    """One pass of ``jfdctint.c`` over eight int32 lanes ``v[0..7]``.

    Outputs 0 and 4 are ``(tmp10 +- tmp11)`` scaled by ``even_shift`` (a left shift when
    positive, a ``DESCALE`` when negative), the others ``DESCALE(.., shift)``.
    """
    tmp0, tmp7 = v[0] + v[7], v[0] - v[7]
    tmp1, tmp6 = v[1] + v[6], v[1] - v[6]
    tmp2, tmp5 = v[2] + v[5], v[2] - v[5]
    tmp3, tmp4 = v[3] + v[4], v[3] - v[4]
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2

    def even(t):
        return t << even_shift if even_shift >= 0 else _descale(t, -even_shift)

    out = [None] * 8
    out[0] = even(tmp10 + tmp11)
    out[4] = even(tmp10 - tmp11)
    z1 = (tmp12 + tmp13) * _F0_541
    out[2] = _descale(z1 + tmp13 * _F0_765, shift)
    out[6] = _descale(z1 + tmp12 * -_F1_847, shift)
    o7, o5, o3, o1 = _odd_part(tmp4, tmp5, tmp6, tmp7)
    out[7], out[5], out[3], out[1] = (_descale(o, shift) for o in (o7, o5, o3, o1))
    return out


def _idct_1d(v: list[jax.Array], shift: int) -> list[jax.Array]:
    """One pass of ``jidctint.c`` over eight int32 lanes (coefficients 0..7 of a column
    or row); every output ``DESCALE(.., shift)``."""
    z1 = (v[2] + v[6]) * _F0_541
    tmp2 = z1 + v[6] * -_F1_847
    tmp3 = z1 + v[2] * _F0_765
    tmp0 = (v[0] + v[4]) << _CONST_BITS
    tmp1 = (v[0] - v[4]) << _CONST_BITS
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    # jidctint's odd part is the forward one with i0..i3 = y7, y5, y3, y1
    o0, o1, o2, o3 = _odd_part(v[7], v[5], v[3], v[1])
    return [_descale(t, shift) for t in (
        tmp10 + o3, tmp11 + o2, tmp12 + o1, tmp13 + o0,
        tmp13 - o0, tmp12 - o1, tmp11 - o2, tmp10 - o3)]


# Blocks are laid out ``(8, 8, ...)``: row and column inside the block first, the blocks
# last, so each lane of a butterfly is a contiguous run over all blocks (vector units on
# CPU and TPU work along the last axis). Between the passes the data stays a list of
# eight lanes wherever the next pass runs along the same axis: stacking lanes into an
# array and slicing them out again lets XLA fuse a producer into all eight lanes of the
# consumer, computing it eight times (measured: 4x slower on CPU).

def _fdct_lanes(blocks: jax.Array) -> list[jax.Array]:
    """Both passes of ``jfdctint.c`` on ``(8, 8, ...) int32`` samples minus 128: the
    coefficients as eight lanes ``[u] (8, ...)`` (vertical frequency u; horizontal v along
    the first axis of each)."""
    rows = _fdct_1d([blocks[:, j] for j in range(8)], _CONST_BITS - _PASS1_BITS, _PASS1_BITS)
    rows = jnp.stack(rows, axis=1)  # (8 rows, 8 v, ...)
    return _fdct_1d([rows[i] for i in range(8)], _CONST_BITS + _PASS1_BITS, -_PASS1_BITS)


def _idct_lanes(coef: list[jax.Array]) -> jax.Array:
    """Both passes of ``jidctint.c`` on dequantised coefficients as eight lanes ``[u] (8,
    ...)``: samples ``(8, 8, ...) int32`` in 0..255 (+ 128, clamped)."""
    cols = jnp.stack(_idct_1d(coef, _CONST_BITS - _PASS1_BITS), axis=0)  # (8 rows, 8 v, ...)
    out = _idct_1d([cols[:, v] for v in range(8)], _CONST_BITS + _PASS1_BITS + 3)
    return jnp.clip(jnp.stack(out, axis=1), -128, 127) + 128


def fdct_islow(blocks: jax.Array) -> jax.Array:
    """libjpeg's islow forward DCT: ``(8, 8, ...) int32`` samples minus 128 (row, column,
    blocks) -> coefficients ``(8, 8, ...) int32`` (vertical, horizontal frequency), scaled
    by 8 against the orthonormal DCT (``jfdctint.c``)."""
    return jnp.stack(_fdct_lanes(blocks), axis=0)


def idct_islow(coef: jax.Array) -> jax.Array:
    """libjpeg's islow inverse DCT: dequantised ``(8, 8, ...) int32`` coefficients (vertical,
    horizontal frequency) -> samples ``(8, 8, ...) int32`` in 0..255 (+ 128, clamped;
    ``jidctint.c``)."""
    return _idct_lanes([coef[u] for u in range(8)])


def quantize(coef: jax.Array, div: jax.Array) -> jax.Array:
    """``jcdctmgr.c`` ``quantize``: ``coef int32`` over ``8 * table`` rounded half away from
    zero, by libjpeg-turbo's reciprocal multiply; ``div (4, ...)`` from ``divisors``
    (broadcast against ``coef``). The product stays under 2^31: |coef| < 2^14 (the islow
    DCT of 8-bit samples), correction <= 1020, reciprocal <= 2^16."""
    q = ((jnp.abs(coef) + div[2]) * div[1]) >> div[3]
    return jnp.where(coef < 0, -q, q)


def code_blocks(blocks: jax.Array, div: jax.Array) -> jax.Array:
    """One JPEG round trip of ``(8, 8, ...) int32`` blocks of samples in 0..255: forward
    DCT, ``quantize`` with ``div (4, 8, 8, ...)`` (``divisors``, broadcast against the
    blocks), dequantise, inverse DCT -> ``(8, 8, ...) int32`` in 0..255."""
    coef = _fdct_lanes(blocks - 128)
    return _idct_lanes([quantize(c, div[:, u]) * div[0, u] for u, c in enumerate(coef)])


# --------------------------------------------------------------------------- colour

_SCALEBITS = 16
_ONE_HALF = 1 << (_SCALEBITS - 1)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALEBITS) + 0.5)


def rgb_to_ycc(rgb: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``jccolor.c``: ``(..., 3) int32`` RGB in 0..255 -> Y, Cb, Cr ``(...) int32`` in 0..255."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    offset = (128 << _SCALEBITS) + _ONE_HALF - 1  # CBCR_OFFSET + ONE_HALF - 1
    y = (_fix(0.29900) * r + _fix(0.58700) * g + _fix(0.11400) * b + _ONE_HALF) >> _SCALEBITS
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset) >> _SCALEBITS
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset) >> _SCALEBITS
    return y, cb, cr


def ycc_to_rgb(y: jax.Array, cb: jax.Array, cr: jax.Array) -> jax.Array:
    """``jdcolor.c``: Y, Cb, Cr ``(...) int32`` in 0..255 -> ``(..., 3) int32`` RGB, clamped."""
    cb = cb - 128
    cr = cr - 128
    r = y + ((_fix(1.40200) * cr + _ONE_HALF) >> _SCALEBITS)
    g = y + ((-_fix(0.34414) * cb + _ONE_HALF - _fix(0.71414) * cr) >> _SCALEBITS)
    b = y + ((_fix(1.77200) * cb + _ONE_HALF) >> _SCALEBITS)
    return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255)


# --------------------------------------------------------------------------- sampling

def downsample_h2v2(p: jax.Array) -> jax.Array:
    """``jcsample.c`` ``h2v2_downsample``: ``(N, 2h, 2w) int32 -> (N, h, w)``, the 2 x 2 sum
    plus 1, 2, 1, 2, ... along the row, shifted right by 2."""
    n, h2, w2 = p.shape
    s = p.reshape(n, h2 // 2, 2, w2 // 2, 2).sum(axis=(2, 4))
    bias = 1 + (jnp.arange(w2 // 2, dtype=jnp.int32) & 1)
    return (s + bias) >> 2


def upsample_h2v2_fancy(c: jax.Array) -> jax.Array:
    """``jdsample.c`` ``h2v2_fancy_upsample``: ``(N, h, w) int32 -> (N, 2h, 2w)``.

    Vertically ``3 * nearer + farther`` row, then horizontally ``(3 * nearer + farther + 8)
    >> 4`` for even output columns and ``+ 7`` for odd ones; the edge rows and columns are
    their own neighbours (libjpeg's context rows and first/last column cases).
    """
    up = jnp.concatenate([c[:, :1], c[:, :-1]], axis=1)
    down = jnp.concatenate([c[:, 1:], c[:, -1:]], axis=1)
    n, h, w = c.shape
    cs = jnp.stack([3 * c + up, 3 * c + down], axis=2).reshape(n, 2 * h, w)
    left = jnp.concatenate([cs[:, :, :1], cs[:, :, :-1]], axis=2)
    right = jnp.concatenate([cs[:, :, 1:], cs[:, :, -1:]], axis=2)
    even = (3 * cs + left + 8) >> 4
    odd = (3 * cs + right + 7) >> 4
    return jnp.stack([even, odd], axis=3).reshape(n, 2 * h, 2 * w)


# --------------------------------------------------------------------------- planes

def _to_blocks(p: jax.Array) -> jax.Array:
    """``(N, 8a, 8b) -> (8, 8, N, a * b)``: block row, column, sample, block."""
    n, h, w = p.shape
    return p.reshape(n, h // 8, 8, w // 8, 8).transpose(2, 4, 0, 1, 3).reshape(8, 8, n, -1)


def _from_blocks(b: jax.Array, h: int, w: int) -> jax.Array:
    """``(8, 8, N, a * b) -> (N, 8a, 8b)``, the inverse of ``_to_blocks``."""
    n = b.shape[2]
    return b.reshape(8, 8, n, h // 8, w // 8).transpose(2, 3, 0, 4, 1).reshape(n, h, w)


def _code_planes(y: jax.Array, cb: jax.Array, cr: jax.Array,
                 luma: jax.Array, chroma: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Round trip of one MCU-padded image's planes: ``y (N, 16a, 16b)``, ``cb, cr (N, 8a,
    8b) int32`` in 0..255, per-sample ``divisors`` ``luma, chroma (N, 4, 8, 8)``.

    All blocks go through one ``code_blocks`` (one set of operations to compile): the
    luma blocks of a sample, four times as many as its chroma blocks of a plane, are
    split into four groups, so blocks are ``(8, 8, N, 6, a * b)`` and the divisors
    ``(4, 8, 8, N, 6, 1)``.
    """
    n, hy, wy = y.shape
    hc, wc = cb.shape[1:]
    k = hc * wc // 64
    blocks = jnp.concatenate([_to_blocks(y).reshape(8, 8, n, 4, k),
                              _to_blocks(cb)[:, :, :, None], _to_blocks(cr)[:, :, :, None]], axis=3)
    lt = luma.transpose(1, 2, 3, 0)[..., None, None]      # (4, 8, 8, N, 1, 1)
    ct = chroma.transpose(1, 2, 3, 0)[..., None, None]
    div = jnp.concatenate([jnp.broadcast_to(lt, lt.shape[:4] + (4, 1)), ct, ct], axis=4)
    out = code_blocks(blocks, div)
    return (_from_blocks(out[:, :, :, :4].reshape(8, 8, n, 4 * k), hy, wy),
            _from_blocks(out[:, :, :, 4], hc, wc), _from_blocks(out[:, :, :, 5], hc, wc))


def _pad_edge(p: jax.Array, rows: int, cols: int) -> jax.Array:
    """Repeat the last row / column of ``(N, h, w, ...)`` until ``rows x cols``."""
    pad = [(0, 0), (0, rows - p.shape[1]), (0, cols - p.shape[2])] + [(0, 0)] * (p.ndim - 3)
    return jnp.pad(p, pad, mode="edge")


def jpeg_batch(x: jax.Array, quality: jax.Array) -> jax.Array:
    """JPEG encode + decode of a batch, equal to Pillow's (libjpeg-turbo) round trip.

    ``x (N, H, W, 3) uint8`` RGB, any ``H, W >= 1``; ``quality (N,) int`` in 1..100 per
    sample (traced: varying qualities do not recompile; values outside 1..100 are
    clipped, as libjpeg does) -> ``(N, H, W, 3) uint8``, what
    ``Image.open(Image.fromarray(x[i]).save(buf, "JPEG", quality=quality[i]))`` decodes
    (4:2:0, baseline, standard tables, islow DCT, fancy upsampling). Jittable; int32 only.
    """
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != jnp.uint8:
        raise ValueError(f"error: jpeg_batch expects (N, H, W, 3) uint8 RGB, got {x.shape} {x.dtype}")
    n, h, w, _ = x.shape
    quality = jnp.asarray(quality)
    if quality.shape not in ((), (n,)) or not jnp.issubdtype(quality.dtype, jnp.integer):
        raise ValueError(f"error: jpeg_batch expects quality ({n},) int (one per sample), "
                         f"got {quality.shape} {quality.dtype}")
    qi = jnp.broadcast_to(jnp.clip(quality.astype(jnp.int32), 1, 100) - 1, (n,))
    luma_t = jnp.asarray(_LUMA_DIVISORS)[qi]
    chroma_t = jnp.asarray(_CHROMA_DIVISORS)[qi]

    # MCU grid: 16 x 16 pixels (luma 2 x 2 blocks, one 8 x 8 block of each chroma plane)
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    y, cb, cr = rgb_to_ycc(x.astype(jnp.int32))
    # luma: last row / column repeated (libjpeg pads to 8; the extra blocks are cropped);
    # chroma: rows padded to even and columns to the MCU width, downsampled, then the
    # last downsampled row repeated to the block height (jcprepct.c)
    hc, wc = -(-h // 2), -(-w // 2)
    cb, cr = (_pad_edge(downsample_h2v2(_pad_edge(c, 2 * hc, wp)), hp // 2, wp // 2)
              for c in (cb, cr))
    y_out, *coded = _code_planes(_pad_edge(y, hp, wp), cb, cr, luma_t, chroma_t)
    y_out = y_out[:, :h, :w]
    chroma = []
    for d in coded:
        d = d[:, :hc, :wc]
        # jdsample.c: fancy upsampling needs 3 or more columns; else pixel replication
        up = upsample_h2v2_fancy(d) if wc > 2 else jnp.repeat(jnp.repeat(d, 2, 1), 2, 2)
        chroma.append(up[:, :h, :w])
    return ycc_to_rgb(y_out, *chroma).astype(jnp.uint8)
