"""What a compiled XLA program does, read from its optimised HLO text.

``program_stats(compiled.as_text())`` walks the computations the device executes in a step
(the entry; of a conditional the branch launching the most kernels; the bodies of loops, once,
and of calls; the bodies of fusions are kernels, not separate launches) and counts:

- kernels (one per launched op: fusions, library calls, copies, collectives, unfused ops),
  split into cuDNN / cuBLAS / Triton / other custom calls and plain fusions;
- ``copy`` ops within device memory and the bytes they move (moves to and from on-chip
  memory, the TPU's VMEM prefetches and write-backs, count apart as ``prefetch`` kernels),
  conditionals, while loops;
- host transfers (send / recv / infeed / outfeed, host callbacks, host-memory copies);
- collectives with their payload: the bytes of an all-reduce's result, of a reduce-scatter's
  (whole) operand, of an all-gather's (whole) result;
- per kernel FLOPs (convolutions and dots exactly from their shapes, elementwise ops one per
  element) and bytes (operands read plus results written; an operand read only through
  slices counts the slices), for ``roofline``.

It is a reading of the text XLA prints (``%name = shape opcode(operands), attributes``), no
XLA internals; the tests pin it against programs whose counts are known.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
               "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16, "token": 0}
ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
LINE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{\s*$")

# Ops that launch no work of their own (views, tuples, the second half of async pairs) or
# whose work is counted in the computations they call.
FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
        "partition-id", "replica-id", "opt-barrier", "add-dependency",
        "all-reduce-done", "all-gather-done", "reduce-scatter-done", "collective-permute-done", "copy-done",
        "async-done", "async-update", "send-done", "recv-done",
        "conditional", "while", "call"}
COLLECTIVES = {"all-reduce", "all-reduce-start", "all-gather", "all-gather-start",
               "reduce-scatter", "reduce-scatter-start", "all-to-all", "collective-permute",
               "collective-permute-start",
               "ragged-all-to-all", "collective-broadcast"}
HOST_OPS = {"send", "recv", "infeed", "outfeed"}
ELEMENTWISE_FREE = FREE | {"broadcast", "reshape", "transpose", "slice", "dynamic-slice",
                           "concatenate", "pad", "iota", "copy", "convert", "reverse",
                           "dynamic-update-slice", "gather", "select"}


@dataclasses.dataclass
class Instr:
    """One HLO instruction: ``name``, result ``shape`` text, ``opcode``, operand names and
    the attribute text after the operands."""

    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    args: str = ""  # the text inside the opcode's parentheses (a parameter's index)


def _split_shape(rest: str) -> tuple[str, str]:
    """``"(f32[2], s32[]) tuple(...)"`` -> (shape text, the rest from the opcode on)."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 2:]
    shape, _, tail = rest.partition(" ")
    return shape, tail


def _operands(text: str) -> tuple[list[str], str, str]:
    """Operand names inside the opcode's parentheses, the attribute text after them, and the
    text inside the parentheses."""
    depth, i = 0, 0
    for i, ch in enumerate(text):
        depth += ch in "({"
        depth -= ch in ")}"
        if depth == 0:
            break
    inner, attrs = text[1:i], text[i + 1:]
    return re.findall(r"%([\w.\-]+)", inner), attrs, inner


def parse(hlo_text: str) -> tuple[dict[str, list[Instr]], str]:
    """Optimised HLO text -> ``({computation: [Instr, ...]}, entry computation name)``."""
    comps: dict[str, list[Instr]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        head = HEADER.match(line)
        if head and not line.startswith(" "):
            current = head.group(2)
            comps[current] = []
            if head.group(1):
                entry = current
            continue
        m = LINE.match(line)
        if m is None or current is None:
            continue
        shape, rest = _split_shape(m.group(2))
        opcode, _, tail = rest.partition("(")
        operands, attrs, args = _operands("(" + tail)
        comps[current].append(Instr(m.group(1), shape, opcode.strip(), operands, attrs, args))
    return comps, entry


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every array in a (possibly tuple) shape text: ``[(dtype, dims), ...]``."""
    return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in ARRAY.findall(shape)]


def nbytes(shape: str) -> int:
    """Bytes of every array in a shape text (a tuple's elements summed)."""
    total = 0.0
    for dtype, dims in arrays(shape):
        n = 1
        for x in dims:
            n *= x
        total += n * DTYPE_BYTES[dtype]
    return int(total)


def _elements(shape: str) -> int:
    found = arrays(shape)
    if not found:
        return 0
    n = 1
    for x in found[0][1]:
        n *= x
    return n


def _first_array_bytes(shape: str) -> int:
    """Bytes of the first array of a shape (a copy-start's tuple is (destination, source, ...))."""
    m = ARRAY.search(shape)
    return nbytes(m.group(0)) if m else 0


def memory_space(shape: str) -> int:
    """Memory space of the first array of a shape: 0 (device memory) unless its layout says
    ``S(n)`` (e.g. 1: TPU VMEM, 5: host memory)."""
    m = re.match(r"\(?\w+\[[\d,]*\](\{[^}]*\})?", shape)
    space = re.search(r"S\((\d+)\)", m.group(1) or "") if m else None
    return int(space.group(1)) if space else 0


def _nth_array(shape: str, n: int) -> str:
    """The text of the ``n``-th array (with its layout) of a tuple shape, or ""."""
    found = re.findall(r"\w+\[[\d,]*\](?:\{[^}]*\})?", shape)
    return found[n] if n < len(found) else ""


def _called(instr: Instr, key: str) -> list[str]:
    m = re.search(key + r"=\{?([^}\s,]+(?:, ?%[\w.\-]+)*)\}?", instr.attrs)
    return re.findall(r"%([\w.\-]+)", m.group(1)) if m else []


def _launched(comps: dict[str, list[Instr]], name: str) -> int:
    return sum(i.opcode not in FREE for i in comps.get(name, []))


def executed_computations(comps: dict[str, list[Instr]], entry: str) -> list[str]:
    """The entry and every computation it runs as control flow, once per step: of a
    conditional's branches the one launching the most kernels (a train step's update, not its
    skip), loop bodies and conditions (once: trip counts are not read), calls and async
    wrappers; not fusion bodies or reducers."""
    seen, todo = [], [entry]
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.append(name)
        for ins in comps[name]:
            if ins.opcode == "conditional":
                branches = _called(ins, "branch_computations") + _called(ins, "true_computation") \
                    + _called(ins, "false_computation")
                if branches:
                    todo.append(max(branches, key=lambda b: _launched(comps, b)))
            elif ins.opcode == "while":
                todo += _called(ins, "body") + _called(ins, "condition")
            elif ins.opcode in ("call", "async-start"):
                todo += _called(ins, "to_apply") + _called(ins, "calls")
    return seen


def _conv_flops(ins: Instr, shapes: dict[str, str]) -> float:
    """2 x output elements x window elements x input features per group."""
    window = re.search(r"window=\{size=([\dx]+)", ins.attrs)
    labels = re.search(r"dim_labels=(\w+)_", ins.attrs)
    if not (window and labels and ins.operands):
        return 0.0
    lhs = arrays(shapes.get(ins.operands[0], ""))
    if not lhs:
        return 0.0
    feature = lhs[0][1][labels.group(1).index("f")]
    groups = re.search(r"feature_group_count=(\d+)", ins.attrs)
    feature //= int(groups.group(1)) if groups else 1
    win = 1
    for x in window.group(1).split("x"):
        win *= int(x)
    out = _elements(ins.shape)
    if "convBackwardFilter" in ins.attrs and len(ins.operands) > 1:
        # cuDNN calls keep the forward convolution's labels: (input, output gradient) -> filter.
        out = _elements(shapes.get(ins.operands[1], ""))
    return 2.0 * out * win * feature


def _dot_flops(ins: Instr, shapes: dict[str, str]) -> float:
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs) or re.search(
        r'"lhs_contracting_dimensions":\[([^\]]*)\]', ins.attrs)
    lhs = arrays(shapes.get(ins.operands[0], "")) if ins.operands else []
    if not (contracting and lhs):
        return 0.0
    k = 1
    for d in re.findall(r"\d+", contracting.group(1)):
        k *= lhs[0][1][int(d)]
    return 2.0 * _elements(ins.shape) * k


def _flops(comps, name: str, shapes: dict[str, str], memo: dict) -> tuple[float, float]:
    """(matrix-unit FLOPs, elementwise FLOPs) of a fused computation."""
    if name in memo:
        return memo[name]
    mxu = vpu = 0.0
    local = {i.name: i.shape for i in comps.get(name, [])}
    for ins in comps.get(name, []):
        a, b = _instr_flops(comps, ins, {**shapes, **local}, memo)
        mxu, vpu = mxu + a, vpu + b
    memo[name] = (mxu, vpu)
    return mxu, vpu


def _instr_flops(comps, ins: Instr, shapes, memo) -> tuple[float, float]:
    if ins.opcode == "convolution" or (ins.opcode == "custom-call" and "$conv" in ins.attrs):
        return _conv_flops(ins, shapes), 0.0
    if ins.opcode == "dot" or (ins.opcode == "custom-call" and "$gemm" in ins.attrs):
        return _dot_flops(ins, shapes), 0.0
    if ins.opcode == "fusion":
        return _sum_pair(_flops(comps, c, {}, memo) for c in _called(ins, "calls"))
    if ins.opcode in ("reduce", "reduce-window"):  # one add per input element (inputs, then inits)
        inputs = ins.operands[: max(1, len(ins.operands) // 2)]
        return 0.0, float(sum(_elements(shapes.get(o, "")) for o in inputs))
    if ins.opcode in ELEMENTWISE_FREE or ins.opcode.endswith(("-start", "-done")):
        return 0.0, 0.0
    return 0.0, float(_elements(ins.shape))


def _sum_pair(pairs) -> tuple[float, float]:
    a = b = 0.0
    for x, y in pairs:
        a, b = a + x, b + y
    return a, b


# Ops through which a fused parameter is still read element for element (a slice after them
# reads only the sliced elements: a GPU fusion computes each output element from its inputs):
# the elementwise ones (a multiply by a vector made from an iota, as the flat state's
# ``Flat.unravel`` factors, included).
PASS_THROUGH = {"convert", "bitcast", "reshape", "copy", "negate", "abs", "multiply", "add",
                "subtract", "divide", "select", "maximum", "minimum"}


def _sliced_elements(name: str, users: dict[str, list[Instr]]) -> int | None:
    """Elements of fused value ``name`` that its users read, when every path from it reaches a
    slice (through ``PASS_THROUGH`` ops): the slices' elements; else None (read in full)."""
    us = users.get(name, [])
    if not us:
        return None
    total = 0
    for u in us:
        if u.opcode in ("slice", "dynamic-slice", "gather"):
            total += _elements(u.shape)
        elif u.opcode in PASS_THROUGH:
            inner = _sliced_elements(u.name, users)
            if inner is None:
                return None
            total += inner
        else:
            return None
    return total


def _fusion_read_bytes(comps, ins: Instr, shapes: dict[str, str]) -> int:
    """Bytes a fusion reads: each operand in full, unless the fused body only slices it
    (directly, or after converts, bitcasts and the like: ``PASS_THROUGH``)."""
    body = comps.get((_called(ins, "calls") or [""])[0], [])
    params = {i.name: int(i.args) for i in body if i.opcode == "parameter" and i.args.strip().isdigit()}
    users: dict[str, list[Instr]] = {}
    for i in body:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    read = {}
    for pname, idx in params.items():
        if idx >= len(ins.operands):
            continue
        operand = shapes.get(ins.operands[idx], "")
        full = nbytes(operand)
        sliced = _sliced_elements(pname, users)
        if sliced is not None and arrays(operand):
            full = min(full, int(sliced * DTYPE_BYTES[arrays(operand)[0][0]]))
        read[idx] = full
    if not params:  # parameters not found: count every operand once
        return sum(nbytes(shapes.get(o, "")) for o in set(ins.operands))
    return sum(read.values())


@dataclasses.dataclass
class Kernel:
    """One launched op: its name, kind, FLOPs (matrix unit / elementwise) and bytes moved; a
    collective's ``opcode`` and ``payload`` (``collective_payload``)."""

    name: str
    kind: str
    mxu_flops: float
    vpu_flops: float
    bytes: int
    dtype: str
    opcode: str = ""
    payload: int = 0


SCATTER_GATHER = ("all-gather", "reduce-scatter")


def collective_payload(ins: Instr, shapes: dict[str, str]) -> int:
    """The bytes a collective is about: an all-reduce's result (a combined one: all its
    results); a reduce-scatter's operands and an all-gather's results, the whole arrays that
    the devices' shares make up. An async start's shape holds its operands and its results."""
    if not ins.opcode.startswith(SCATTER_GATHER):
        return nbytes(ins.shape)
    read = sum(nbytes(shapes.get(o, "")) for o in ins.operands)
    written = nbytes(ins.shape) - (read if ins.opcode.endswith("-start") else 0)
    return max(read, written)

def kernel_kind(ins: Instr) -> str:
    """cudnn / cublas / triton / custom-call / fusion / copy / collective / host / other
    (``program_stats`` further splits copies by the memory they write to)."""
    if ins.opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', ins.attrs)
        t = target.group(1) if target else ""
        if t.startswith("__cudnn"):
            return "cudnn"
        if t.startswith("__cublas"):
            return "cublas"
        if "triton" in t.lower():
            return "triton"
        if "callback" in t.lower() or "host" in t.lower():
            return "host"
        return "custom-call"
    if ins.opcode == "fusion":
        return "triton" if "__triton" in ins.attrs else "fusion"
    if ins.opcode in ("copy", "copy-start"):
        return "copy"
    if ins.opcode in COLLECTIVES:
        return "collective"
    if ins.opcode in HOST_OPS:
        return "host"
    return "other"


@dataclasses.dataclass
class ProgramStats:
    """Counts of one compiled program (see the module docstring)."""

    kernels: list[Kernel]
    kinds: Counter
    copies: int
    copy_bytes: int
    conditionals: int
    loops: int
    host_transfers: list[str]
    collectives: list[tuple[str, int]]

    @property
    def collective_bytes(self) -> int:
        return sum(b for _, b in self.collectives)


def program_stats(hlo_text: str) -> ProgramStats:
    """Parse an optimised HLO module text and count what its executed computations launch."""
    comps, entry = parse(hlo_text)
    shapes = {i.name: i.shape for c in comps.values() for i in c}
    memo: dict = {}
    kernels, kinds = [], Counter()
    copies = copy_bytes = conditionals = loops = 0
    host, collectives = [], []
    for name in executed_computations(comps, entry):
        for ins in comps[name]:
            if ins.opcode == "conditional":
                conditionals += 1
            if ins.opcode == "while":
                loops += 1
            if ins.opcode in FREE:
                continue
            kind = kernel_kind(ins)
            if kind == "copy":
                # A copy-start's shape is (destination, source, context). S(5) is host memory
                # (offloading); another space on either side is on-chip memory (the TPU's
                # VMEM prefetches and write-backs placed by memory-space assignment): moves
                # between memories, not copies of arrays within device memory.
                src = (_nth_array(ins.shape, 1) if ins.opcode == "copy-start"
                       else shapes.get(ins.operands[0], "") if ins.operands else "")
                spaces = {memory_space(ins.shape), memory_space(src)}
                kind = "host" if 5 in spaces else "copy" if spaces == {0} else "prefetch"
            kinds[kind] += 1
            if kind == "copy":
                copies += 1
                copy_bytes += _first_array_bytes(ins.shape)
            if kind == "host":
                host.append(f"{ins.opcode} {ins.name}")
            payload = collective_payload(ins, shapes) if kind == "collective" else 0
            if kind == "collective":
                collectives.append((ins.opcode, payload))
            mxu, vpu = _instr_flops(comps, ins, shapes, memo)
            read = (_fusion_read_bytes(comps, ins, shapes) if ins.opcode == "fusion"
                    else sum(nbytes(shapes.get(o, "")) for o in ins.operands))
            found = arrays(ins.shape)
            kernels.append(Kernel(ins.name, kind, mxu, vpu, read + nbytes(ins.shape),
                                  found[0][0] if found else "", ins.opcode, payload))
    return ProgramStats(kernels, kinds, copies, copy_bytes, conditionals, loops, host, collectives)


@dataclasses.dataclass(frozen=True)
class Device:
    """Published peaks of one accelerator: ``matrix_tflops`` per operand dtype (dense),
    ``vector_tflops`` for elementwise work, HBM ``bandwidth_gbs``, ``memory_gib``, and the
    fixed cost charged per launched kernel (``launch_us``)."""

    name: str
    matrix_tflops: dict
    vector_tflops: float
    bandwidth_gbs: float
    memory_gib: float
    launch_us: float
    interconnect_gbs: float


# Published dense peaks (TFLOP/s per operand dtype; float32 convolutions run as TF32 on
# Hopper at JAX's default precision, and as single-pass bfloat16 on TPU), HBM bandwidth,
# memory, and interconnect bandwidth per device and direction. ``launch_us``: the cost
# charged per kernel. GPU: 2 us, between a kernel node of a CUDA graph (~1 us) and a
# stream launch from the host (~3-5 us); every kernel here is far smaller than the launch
# queue, so the estimate is what the GPU can do if the host keeps up. TPU: the program runs
# on the chip without host launches; 0.5 us per fusion for its pipeline fill and drain.
# TPU vector rates are not published; elementwise kernels are memory-bound either way.
DEVICES = {
    "h100": Device("H100 SXM 80GB", {"bf16": 989.4, "f16": 989.4, "f32": 494.7}, 66.9,
                   3352.0, 79.1, 2.0, 450.0),
    "h200": Device("H200 SXM 141GB", {"bf16": 989.4, "f16": 989.4, "f32": 494.7}, 66.9,
                   4800.0, 140.4, 2.0, 450.0),
    "v5e": Device("TPU v5e", {"bf16": 197.0, "f32": 197.0}, 24.6, 819.0, 16.0, 0.5, 100.0),
    "v5p": Device("TPU v5p", {"bf16": 459.0, "f32": 459.0}, 57.4, 2765.0, 95.0, 0.5, 300.0),
}


def roofline_seconds(stats: ProgramStats, device: Device, devices: int = 1,
                     launch_us: float | None = None) -> float:
    """Estimated run time (seconds) of a program on ``device``: each kernel takes the longer of
    its compute time (matrix FLOPs at the dense peak of its output dtype, elementwise FLOPs at
    the vector peak) and its memory time (bytes at HBM bandwidth), plus a fixed launch cost;
    a collective over ``devices`` moves ``2 (n-1)/n`` of its bytes (ring all-reduce; a
    reduce-scatter or an all-gather ``(n-1)/n`` of its payload, one half of a ring all-reduce)
    at the interconnect bandwidth. Kernels run one after another: no overlap is assumed."""
    launch = (device.launch_us if launch_us is None else launch_us) * 1e-6
    total = 0.0
    for k in stats.kernels:
        if k.kind == "collective":
            share = (devices - 1) / max(devices, 1)
            moved = (share * k.payload if k.opcode.startswith(SCATTER_GATHER)
                     else 2.0 * share * nbytes_of_result(k))
            total += moved / (device.interconnect_gbs * 1e9) + launch
            continue
        peak = device.matrix_tflops.get(k.dtype, device.matrix_tflops["bf16"])
        compute = k.mxu_flops / (peak * 1e12) + k.vpu_flops / (device.vector_tflops * 1e12)
        memory = k.bytes / (device.bandwidth_gbs * 1e9)
        total += max(compute, memory) + launch
    return total


def nbytes_of_result(k: "Kernel") -> int:
    """A collective's payload: half of what it reads and writes (the same array in and out)."""
    return k.bytes // 2
