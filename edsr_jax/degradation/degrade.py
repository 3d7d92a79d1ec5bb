"""Degradation operators and a small spec language that composes them.

A spec is a chain of operators applied left to right to an HR image::

    "blur(0.2,1.5) > bicubic(4) > noise(0,8) > jpeg(30,90)"

Every operator maps ``(H, W, 3) uint8`` to ``(H', W', 3) uint8`` (results are rounded
half up and clipped to [0, 255] after each operator, so a chain is exactly the
composition of the operator functions below). Numeric arguments are either one
fixed value, ``blur(1.2)``, or a ``lo,hi`` range sampled uniformly per image,
``blur(0.2,1.5)`` (integers for ``jpeg``). ``aniso_blur`` takes three values or
three ranges (six numbers).

Operators (``s`` in 2, 3, 4; all lengths in pixels of the image the operator sees):

- ``bicubic(s)``: MATLAB ``imresize(img, 1/s)`` (antialiased cubic); equal to
  ``edsr_jax.degradation.imresize.imresize`` bit for bit.
- ``bilinear(s)``: MATLAB ``imresize(img, 1/s, 'bilinear')``: the triangle kernel
  widened by ``s`` (antialiased), centred on each s x s block, symmetric edges.
- ``nearest(s)``: decimation ``img[::s, ::s]``, the top-left pixel of every s x s
  block (phase 0, no filtering, aliases). Against ``bicubic``/``bilinear``, whose LR
  pixel sits at the block centre, the LR grid is shifted by ``(s - 1) / 2`` HR pixels
  up and left; a model trained on it learns that shift.
- ``blur(sigma)``: isotropic Gaussian, kernel truncated at ``ceil(4 sigma)``,
  symmetric edges; ``sigma = 0`` is the identity.
- ``aniso_blur(sigma_x, sigma_y, theta)``: Gaussian with standard deviations
  ``sigma_x`` and ``sigma_y`` along axes rotated by ``theta`` degrees
  (counter-clockwise from the x axis, image rows pointing down), truncated at the
  4-sigma ellipse, symmetric edges.
- ``noise(sigma)``: additive white Gaussian noise, ``sigma`` on the 0-255 scale,
  independent per pixel and channel.
- ``jpeg(quality)``: encoded and decoded by Pillow's libjpeg in memory (quality
  1..100, default 4:2:0 chroma subsampling).

Mixtures: alternatives joined by ``|``, ``"bicubic | nearest > jpeg(30,90) | blur(0.5,2) >
bilinear > noise(1,10)"``, give a ``Mixture``: each image (each training patch) is degraded by
one alternative drawn uniformly, then with that chain's own sampled parameters (the random
degradation chains a model for unknown damage trains on). Every alternative must downscale by
the same factor. ``>`` binds tighter than ``|``.

A resizing operator may leave its factor open, ``bicubic`` or ``bicubic(S)``; then
``parse(spec, scale=s)`` fills it in (``prepare`` uses one spec for several scales).

Crops and margins: with ``Pipeline.margin`` HR pixels of context on each side and a
crop origin that is a multiple of ``scale``, the interior of a degraded crop equals
the same region of the degraded whole image bit for bit, for deterministic chains
without jpeg. A jpeg step codes the crop on its own block grid: the result is
statistically equivalent (same quality, same kind of artefacts) but not bit-equal, and
the data pipeline needs nothing more (JPEG codes 16 x 16 macroblocks independently, so
bit-equality would need crops aligned to the whole image's block grid). ``noise`` and
sampled ranges are random: only a chain's deterministic part is reproduced by a crop.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edsr_jax import SCALES
# The host operators, re-exported: degrade.bicubic, degrade.jpeg, ... are the library's names.
from edsr_jax.degradation.operators import (TRUNCATE, _check_image, _to_uint8,  # noqa: F401
                                            _triangle_geometry, aniso_blur, aniso_kernel,
                                            bicubic, bilinear, blur, gaussian_kernel1d, jpeg,
                                            nearest, noise)

# The spec grammar in a few lines, for the --help of prepare and evaluate (and the README).
SPEC_HELP = """\
degradation spec (--spec): operators applied left to right, joined by '>':
  "bicubic"  "nearest > jpeg(30,60)"  "blur(0.2,1.5) > bicubic > noise(0,8) > jpeg(30,90)"
  resize (their factors multiply to the scale; one may be left open, written bicubic or
  bicubic(S), and is then filled in per scale):
    bicubic(s)     MATLAB imresize(img, 1/s): antialiased cubic (the papers' LR)
    bilinear(s)    MATLAB imresize(img, 1/s, 'bilinear'): antialiased triangle
    nearest(s)     img[::s, ::s], the top-left pixel of each s x s block (aliases)
  other operators, anywhere in the chain:
    blur(sigma)                 isotropic Gaussian, sigma in pixels (0 = none)
    aniso_blur(sx, sy, theta)   Gaussian with sigmas sx, sy along axes turned theta degrees
    noise(sigma)                additive Gaussian noise, sigma on the 0-255 scale
    jpeg(quality)               JPEG encode and decode in memory, quality 1..100
  a number may be a range lo,hi sampled uniformly per image: blur(0.2,1.5), jpeg(30,60)
  (jpeg: integers); aniso_blur takes 3 values or 3 ranges (6 numbers).
  alternatives joined by '|': each image drawn uniformly from one chain, e.g.
  "bicubic | nearest > jpeg(30,90) | blur(0.5,2) > bilinear > noise(1,10)"
"""


class SpecError(ValueError):
    """A degradation spec that cannot be parsed; the message names the fault."""


# --------------------------------------------------------------------------- operator table

@dataclass(frozen=True)
class _Param:
    name: str
    kind: str  # "float", "int" or "scale"
    lo: float
    hi: float


@dataclass(frozen=True)
class _OpDef:
    name: str
    params: tuple[_Param, ...]
    fn: Callable[..., np.ndarray]
    resize: bool = False
    uses_rng: bool = False


_SCALE = _Param("scale", "scale", 2, 4)
OPS: dict[str, _OpDef] = {op.name: op for op in (
    _OpDef("bicubic", (_SCALE,), bicubic, resize=True),
    _OpDef("bilinear", (_SCALE,), bilinear, resize=True),
    _OpDef("nearest", (_SCALE,), nearest, resize=True),
    _OpDef("blur", (_Param("sigma", "float", 0, 16),), blur),
    _OpDef("aniso_blur", (_Param("sigma_x", "float", 0, 10), _Param("sigma_y", "float", 0, 10),
                          _Param("theta", "float", -360, 360)), aniso_blur),
    _OpDef("noise", (_Param("sigma", "float", 0, 255),), noise, uses_rng=True),
    _OpDef("jpeg", (_Param("quality", "int", 1, 100),), jpeg),
)}


# --------------------------------------------------------------------------- pipeline

def _fmt(v: float) -> str:
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


@dataclass(frozen=True)
class Step:
    """One operator with, per parameter, a ``(lo, hi)`` range (``lo == hi`` when fixed)."""

    op: str
    ranges: tuple[tuple[float, float], ...]

    @property
    def fixed(self) -> bool:
        return all(lo == hi for lo, hi in self.ranges)

    @property
    def text(self) -> str:
        if self.fixed:
            args = [_fmt(lo) for lo, _ in self.ranges]
        else:
            args = [f"{_fmt(lo)},{_fmt(hi)}" for lo, hi in self.ranges]
        return f"{self.op}({','.join(args)})"

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Concrete parameters ``{"op": name, param: value, ...}`` (ranges drawn from ``rng``)."""
        out: dict[str, Any] = {"op": self.op}
        for p, (lo, hi) in zip(OPS[self.op].params, self.ranges):
            if p.kind in ("int", "scale"):
                out[p.name] = int(lo) if lo == hi else int(rng.integers(int(lo), int(hi) + 1))
            else:
                out[p.name] = float(lo) if lo == hi else float(rng.uniform(lo, hi))
        return out


def _first_clean(w: int, s: int, taps: Callable[[int], int]) -> int:
    """Smallest output index whose lowest input tap ``taps(j)`` is >= w (and >= 0)."""
    j = 0
    while taps(j) < max(w, 0):
        j += 1
    return j


def _corruption_after(step: Step, w: int) -> int:
    """Pixels from a crop edge that differ from the whole image after ``step``.

    ``w`` is that width before the step, in pixels of the image the step sees. A jpeg
    keeps it (its crop is counted as statistically equivalent to the whole image's).
    """
    op = step.op
    if op in ("bicubic", "bilinear", "nearest"):
        s = int(step.ranges[0][0])
        if op == "nearest":
            return _first_clean(w, s, lambda j: j * s)
        half = 2 * s if op == "bicubic" else s  # kernel support |d| < half
        # lowest tap with nonzero weight: strictly above centre - half.
        return _first_clean(w, s, lambda j: math.floor((j + 0.5) * s - 0.5 - half) + 1)
    if op == "blur":
        return w + math.ceil(TRUNCATE * step.ranges[0][1])
    if op == "aniso_blur":
        return w + math.ceil(TRUNCATE * max(step.ranges[0][1], step.ranges[1][1]))
    return w  # noise: per pixel; jpeg: statistically equivalent


@dataclass(frozen=True)
class Pipeline:
    """A parsed degradation chain. Call it on an HR image with an explicit generator.

    Attributes: ``steps``; ``spec`` canonical text (``parse(p.spec)`` gives ``p`` back);
    ``scale`` total downscale factor; ``margin`` HR context pixels per side (a multiple
    of ``scale``) so that, for a crop whose origin is a multiple of ``scale``, the LR
    interior equals the whole image's LR there, except that a jpeg step codes the crop
    on its own block grid (statistically equivalent, not bit-equal).
    """

    steps: tuple[Step, ...]
    scale: int = field(init=False)
    margin: int = field(init=False)

    def __post_init__(self):
        scale, w = 1, 0
        for st in self.steps:
            w = _corruption_after(st, w)
            if OPS[st.op].resize:
                scale *= int(st.ranges[0][0])
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "margin", w * scale)

    @property
    def spec(self) -> str:
        return " > ".join(st.text for st in self.steps)

    @property
    def symmetries(self) -> tuple[int, ...]:
        """The flips and quarter turns ``k`` (numbered as ``data.symmetry``: ``k & 4`` flips
        left-right, then ``k & 3`` quarter turns) that commute with this chain, so that
        ``(symmetry(lr, k), symmetry(hr, k))`` is again a pair this chain makes: all eight
        for centred operators (bicubic, bilinear, blur, noise; jpeg in distribution, its
        block grid lying anywhere relative to a patch), fewer where an operator has an
        orientation or a phase (``symmetries_of``). Training augmentation draws from these."""
        keep = set(range(8))
        for st in self.steps:
            keep &= set(symmetries_of(st))
        return tuple(sorted(keep))

    def sample(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Concrete parameters for every step, e.g. ``[{"op": "blur", "sigma": 0.8}, ...]``."""
        return [st.sample(rng) for st in self.steps]

    def apply(self, hr: np.ndarray, params: list[dict[str, Any]],
              rng: np.random.Generator) -> np.ndarray:
        """Run the chain with concrete ``params`` (from ``sample``); ``rng`` feeds ``noise``.

        ``hr (H, W, 3) uint8`` with H, W multiples of ``scale`` -> ``(H/scale, W/scale, 3) uint8``.
        """
        hr = _check_image(hr, "degradation")
        h, w = hr.shape[:2]
        if h % self.scale or w % self.scale:
            raise ValueError(f"degradation '{self.spec}' needs height and width divisible by "
                             f"{self.scale}, got {h}x{w}")
        x = hr
        for p in params:
            op = OPS[p["op"]]
            kw = {k: v for k, v in p.items() if k != "op"}
            x = op.fn(x, rng=rng, **kw) if op.uses_rng else op.fn(x, **kw)
        return x

    def __call__(self, hr: np.ndarray, rng: np.random.Generator, return_params: bool = False):
        """Degrade ``hr (H, W, 3) uint8`` to ``(H/scale, W/scale, 3) uint8``.

        Same generator state, same output: parameters are drawn first (``sample``),
        then the operators run (``apply``). With ``return_params`` returns ``(lr, params)``.
        """
        params = self.sample(rng)
        lr = self.apply(hr, params, rng)
        return (lr, params) if return_params else lr


@dataclass(frozen=True)
class Mixture:
    """Alternative chains (``"a | b | c"``): each image is degraded by one of ``alternatives``
    drawn uniformly, then by that chain's own sampled parameters. The same interface as
    ``Pipeline``: ``spec``, ``scale`` (every alternative's), ``margin`` (the largest),
    ``symmetries`` (those every alternative keeps), ``sample``, ``apply``, ``__call__``."""

    alternatives: tuple[Pipeline, ...]
    scale: int = field(init=False)
    margin: int = field(init=False)

    def __post_init__(self):
        if len(self.alternatives) < 2:
            raise SpecError("a mixture needs at least two alternatives")
        scales = {p.scale for p in self.alternatives}
        if len(scales) != 1:
            raise SpecError(f"{self.spec!r}: every alternative must downscale by the same factor, "
                            f"got {', '.join(f'{p.spec!r} by {p.scale}' for p in self.alternatives)}")
        object.__setattr__(self, "scale", scales.pop())
        object.__setattr__(self, "margin", max(p.margin for p in self.alternatives))

    @property
    def spec(self) -> str:
        return " | ".join(p.spec for p in self.alternatives)

    @property
    def symmetries(self) -> tuple[int, ...]:
        """The symmetries every alternative commutes with (``Pipeline.symmetries``)."""
        return tuple(sorted(set.intersection(*(set(p.symmetries) for p in self.alternatives))))

    def sample(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``[{"op": "choose", "alternative": i, "of": n}, <alternative i's parameters>...]``:
        the alternative drawn first, then its chain's parameters (``Pipeline.sample``)."""
        i = int(rng.integers(len(self.alternatives)))
        return [{"op": "choose", "alternative": i, "of": len(self.alternatives)},
                *self.alternatives[i].sample(rng)]

    def apply(self, hr: np.ndarray, params: list[dict[str, Any]],
              rng: np.random.Generator) -> np.ndarray:
        """Run the alternative ``params[0]`` names with the rest of ``params`` (from ``sample``);
        ``hr (H, W, 3) uint8 -> (H/scale, W/scale, 3) uint8``."""
        first = params[0] if params else {}
        if first.get("op") != "choose" or not 0 <= first.get("alternative", -1) < len(self.alternatives):
            raise ValueError(f"mixture {self.spec!r}: parameters must start with the chosen "
                             f"alternative (Mixture.sample), got {first!r}")
        return self.alternatives[first["alternative"]].apply(hr, params[1:], rng)

    def __call__(self, hr: np.ndarray, rng: np.random.Generator, return_params: bool = False):
        """``Pipeline.__call__`` with one alternative drawn from ``rng``."""
        params = self.sample(rng)
        lr = self.apply(hr, params, rng)
        return (lr, params) if return_params else lr


ALL_SYMMETRIES = tuple(range(8))
TRANSPOSE = 5  # data.symmetry(x, 5): flip left-right, then a quarter turn = the transpose
HALF_TURN = 2


def symmetries_of(step: Step) -> tuple[int, ...]:
    """The symmetries (``Pipeline.symmetries``) one operator commutes with.

    ``nearest(s)`` keeps the top-left pixel of each block: a flip or a quarter turn moves
    that pixel to another corner of the block (an HR shift of ``s - 1`` pixels against the
    LR), so only the identity and the transpose, which keep the top-left corner, commute.
    ``aniso_blur`` with a kernel angle that does not range over a half turn has an
    orientation: the identity and the half turn (which maps every Gaussian to itself).
    Everything else: all eight."""
    if step.op == "nearest":
        return (0, TRANSPOSE)
    if step.op == "aniso_blur":
        (sx_lo, sx_hi), (sy_lo, sy_hi), (t_lo, t_hi) = step.ranges
        round_kernel = sx_lo == sx_hi == sy_lo == sy_hi
        if not round_kernel and t_hi - t_lo < 180:
            return (0, HALF_TURN)
    return ALL_SYMMETRIES


# --------------------------------------------------------------------------- parser

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDERS = ("S", "s")


def _where(spec: str, pos: int) -> str:
    return f"at column {pos + 1} of {spec!r}"


def _known() -> str:
    return ", ".join(sorted(OPS))


def image_rng(name: str) -> np.random.Generator:
    """A generator seeded from an image's file name, so an evaluation image always gets
    the same sampled degradation (CRC-32 of the UTF-8 name)."""
    import zlib

    return np.random.default_rng(zlib.crc32(name.encode()))


def parse(spec: str, scale: int | None = None) -> Pipeline | Mixture:
    """Parse a spec such as ``"blur(0.2,1.5) > bicubic(4) > noise(0,8) > jpeg(30,90)"``
    (a ``Pipeline``) or alternatives ``"bicubic | nearest > jpeg(30,90)"`` (a ``Mixture``).

    A resizing operator written without a factor (``bicubic``) or with ``S``
    (``bicubic(S)``) takes ``scale``; when ``scale`` is given the chain's total factor
    must equal it. Raises ``SpecError`` naming the fault and where it is.
    """
    if not isinstance(spec, str):
        raise SpecError(f"a degradation spec must be text, got {type(spec).__name__}")
    if scale is not None and scale not in SCALES:
        raise SpecError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    if "|" not in spec:
        return _parse_chain(spec, scale)
    pieces = spec.split("|")
    chains = []
    for k, piece in enumerate(pieces, 1):
        if not piece.strip():
            raise SpecError(f"alternative {k} of {spec!r} is empty: write chains between the '|'")
        try:
            chains.append(_parse_chain(piece.strip(), scale))
        except SpecError as e:
            raise SpecError(f"alternative {k} of {spec!r}: {e}") from None
    return Mixture(tuple(chains))


def _parse_chain(spec: str, scale: int | None) -> Pipeline:
    """One chain ``op > op > ...`` (``parse`` without alternatives)."""
    if not spec.strip():
        raise SpecError(f"empty degradation spec; known operators: {_known()}")
    steps: list[Step] = []
    open_count = 0
    pos, n = 0, len(spec)

    def skip_ws(i: int) -> int:
        while i < n and spec[i].isspace():
            i += 1
        return i

    while True:
        pos = skip_ws(pos)
        m = _NAME.match(spec, pos)
        if not m:
            found = repr(spec[pos]) if pos < n else "the end"
            raise SpecError(f"syntax error {_where(spec, pos)}: expected an operator name, "
                            f"found {found}")
        name, name_pos = m.group(), pos
        pos = skip_ws(m.end())
        if name not in OPS:
            close = difflib.get_close_matches(name, OPS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SpecError(f"unknown operator {name!r} {_where(spec, name_pos)}{hint}; "
                            f"known operators: {_known()}")
        opdef = OPS[name]
        args: list[tuple[str, int]] = []
        if pos < n and spec[pos] == "(":
            close_at = spec.find(")", pos)
            inner_end = close_at if close_at >= 0 else n
            bad = re.search(r"[()>]", spec[pos + 1:inner_end])
            if close_at < 0 or bad:
                at = pos + 1 + bad.start() if bad else n
                raise SpecError(f"syntax error {_where(spec, at)}: missing ')' for "
                                f"'{name}(' opened at column {pos + 1}")
            start = pos + 1
            inner = spec[start:close_at]
            if inner.strip():
                for piece in inner.split(","):
                    args.append((piece.strip(), start + len(piece) - len(piece.lstrip())))
                    start += len(piece) + 1
            pos = skip_ws(close_at + 1)
        steps.append(_make_step(spec, opdef, args, name_pos, scale))
        if opdef.resize and steps[-1].ranges[0][0] == 0:
            open_count += 1
        if pos >= n:
            break
        if spec[pos] != ">":
            raise SpecError(f"syntax error {_where(spec, pos)}: expected '>' or the end of the "
                            f"spec after {name}, found {spec[pos]!r}")
        pos += 1
        if skip_ws(pos) >= n:
            raise SpecError(f"syntax error {_where(spec, pos)}: expected an operator name "
                            f"after '>'")

    if open_count:
        if open_count > 1:
            raise SpecError(f"{spec!r} leaves {open_count} resize factors open; "
                            "at most one may take the scale")
        if scale is None:
            raise SpecError(f"{spec!r} leaves the resize factor open (no factor or S); "
                            "give the scale (parse(spec, scale=...))")
        fixed = math.prod(int(st.ranges[0][0]) for st in steps
                          if OPS[st.op].resize and st.ranges[0][0] != 0)
        if fixed != 1 or scale not in SCALES:
            raise SpecError(f"{spec!r}: the open resize factor must be the only resize "
                            "when a scale is given")
        steps = [Step(st.op, ((scale, scale),)) if OPS[st.op].resize and st.ranges[0][0] == 0
                 else st for st in steps]
    pipe = Pipeline(tuple(steps))
    if scale is not None and pipe.scale != scale:
        raise SpecError(f"{spec!r} downscales by {pipe.scale}, not {scale}; leave the factor "
                        f"open (e.g. 'bicubic' or 'bicubic(S)') to use it for any scale")
    return pipe


def _make_step(spec: str, opdef: _OpDef, args: list[tuple[str, int]], name_pos: int,
               scale: int | None) -> Step:
    name, params = opdef.name, opdef.params
    k = len(params)
    names = ", ".join(p.name for p in params)
    if opdef.resize and (not args or (len(args) == 1 and args[0][0] in _PLACEHOLDERS)):
        return Step(name, ((0, 0),))  # open factor, filled by parse
    if len(args) not in (k, 2 * k):
        plural = "s" if k > 1 else ""
        how = (f"{k} value{plural} ({names})" if opdef.resize else
               f"{k} value{plural} ({names}) or {2 * k} ({'lo,hi ranges' if k > 1 else 'a lo,hi range'})")
        raise SpecError(f"{name} takes {how}, got {len(args)} {_where(spec, name_pos)}")
    if opdef.resize and len(args) != k:
        raise SpecError(f"{name} takes one fixed factor (2, 3 or 4), got {len(args)} values "
                        f"{_where(spec, name_pos)}")
    values = []
    for text, at in args:
        if text in _PLACEHOLDERS:
            raise SpecError(f"{name}: the scale placeholder {text!r} is only allowed as the "
                            f"factor of a resize operator {_where(spec, at)}")
        try:
            v = float(text)
        except ValueError:
            what = "an empty value" if not text else f"{text!r} is not a number"
            raise SpecError(f"{name}: {what} {_where(spec, at)}") from None
        if not math.isfinite(v):
            raise SpecError(f"{name}: {text!r} is not a finite number {_where(spec, at)}")
        values.append((v, text, at))
    ranges = []
    per = len(values) // k
    for i, p in enumerate(params):
        group = values[i * per:(i + 1) * per]
        for v, text, at in group:
            if p.kind == "scale":
                if v not in SCALES:
                    raise SpecError(f"{name} factor must be 2, 3 or 4, got {text} {_where(spec, at)}")
            elif not p.lo <= v <= p.hi or (p.kind == "int" and not v.is_integer()):
                kind = "an integer" if p.kind == "int" else "a number"
                raise SpecError(f"{name} {p.name} must be {kind} in {p.lo:g}..{p.hi:g}, "
                                f"got {text} {_where(spec, at)}")
        lo, hi = group[0][0], group[-1][0]
        if lo > hi:
            raise SpecError(f"{name} {p.name} range has lo > hi ({group[0][1]} > {group[-1][1]}) "
                            f"{_where(spec, group[0][2])}")
        ranges.append((lo, hi))
    return Step(name, tuple(ranges))
