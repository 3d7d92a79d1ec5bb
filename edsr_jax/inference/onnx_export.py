"""Export a trained EDSR or MDSR (one scale) as an ONNX model, for onnxruntime, TensorRT,
OpenVINO and the other runtimes BasicSR / Real-ESRGAN models are deployed with.

The graph is written node by node from the official PyTorch layout of the weights
(``torch_convert.to_state_dict`` / ``mdsr_to_state_dict``, NumPy only): EDSR is a chain of
five ONNX operators (Conv, Relu, Mul, Add/Sub, DepthToSpace), so no tracer is involved and the
file depends on neither JAX nor PyTorch. The model's contract is EDSR-PyTorch's:

    input  ``input``  ``(batch, 3, height, width)`` float32, RGB in [0, 255], NCHW
    output ``output`` ``(batch, 3, height*s, width*s)`` float32, about [0, 255], not clipped

with batch, height and width dynamic. ``DepthToSpace`` in ``CRD`` mode is PyTorch's
``PixelShuffle`` (and ``edsr.pixel_shuffle``); the initializers carry the official key names
(``head.0.weight``, ``body.3.body.2.bias``, ...). Opset 17, IR version 8 (onnxruntime 1.14
and later read it). The writer needs the ``onnx`` package (``pip install "edsr-jax[onnx]"``);
without it ``require_onnx`` raises a ``cli.UsageError`` saying so.
"""

from __future__ import annotations

import json

import numpy as np

from edsr_jax.inference import infer, torch_convert
from edsr_jax.io import cli
from edsr_jax.nets import mdsr
from edsr_jax.nets.edsr import DIV2K_RGB_MEAN, ModelConfig, upsample_stages

ONNX_HINT = 'ONNX export needs the onnx package; install it with: pip install "edsr-jax[onnx]"'
OPSET = 17
IR_VERSION = 8  # the IR of opset 17: older runtimes refuse files stamped with a newer IR
INPUT, OUTPUT = "input", "output"


def require_onnx():
    """The ``onnx`` module; ``cli.UsageError`` with the install hint when it is missing."""
    try:
        import onnx
    except ImportError:
        raise cli.UsageError(ONNX_HINT) from None
    return onnx


def onnx_model(config: ModelConfig, params, *, scale: int | None = None, name: str | None = None):
    """The ``onnx.ModelProto`` of ``config`` with ``params`` baked in (float32): ``(b, 3, h, w)``
    float32 in [0, 255] -> ``(b, 3, h*s, w*s)`` float32, b/h/w dynamic. An ``mdsr.MDSRConfig``
    needs ``scale`` (one of its scales; only that scale's branches go in); EDSR: ``scale``
    None or its own (``infer.resolve_scale``; ValueError otherwise). ``metadata_props`` hold
    ``name``, ``scale``, ``model`` (the config as JSON), ``layout`` and ``range``."""
    onnx = require_onnx()
    mdsr_scale = infer.resolve_scale(config, scale)
    s = infer.output_scale(config, mdsr_scale)
    g = _Graph(onnx)
    if infer.is_mdsr(config):
        g.sd = torch_convert.mdsr_to_state_dict(params, config)
        _mdsr_body(g, config, mdsr_scale)
    else:
        g.sd = torch_convert.to_state_dict(params, config)
        _edsr_body(g, config)
    label = name or infer.model_name(config, mdsr_scale)
    h = onnx.helper
    graph = h.make_graph(
        g.nodes, label,
        [h.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [h.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT,
                                  ["batch", 3, f"height*{s}", f"width*{s}"])],
        initializer=g.initializers)
    model = h.make_model(graph, producer_name="edsr-jax", opset_imports=[h.make_opsetid("", OPSET)],
                         doc_string=f"{label}: (batch, 3, height, width) float32 RGB in [0, 255] -> "
                                    f"(batch, 3, height*{s}, width*{s}) float32, not clipped")
    model.ir_version = IR_VERSION
    from edsr_jax.training import checkpoint

    meta = {"name": label, "scale": str(s), "model": json.dumps(checkpoint.model_config_to_dict(config)),
            "layout": "NCHW", "range": "[0, 255]"}
    h.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_bytes(config: ModelConfig, params, *, scale: int | None = None, name: str | None = None) -> bytes:
    """``onnx_model`` serialized: the bytes of a ``.onnx`` file."""
    return onnx_model(config, params, scale=scale, name=name).SerializeToString()


class _Graph:
    """Nodes and initializers being written; ``sd`` is the official-layout state_dict."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers, self.sd = onnx, [], [], {}
        self._names: set[str] = set()
        self._count = 0

    def value(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, key: str, array: np.ndarray) -> str:
        if key not in self._names:
            self._names.add(key)
            self.initializers.append(self.onnx.numpy_helper.from_array(
                np.ascontiguousarray(array, np.float32), key))
        return key

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.value(hint)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, prefix: str) -> str:
        """The official module ``prefix``'s k x k 'same' convolution plus bias."""
        w = self.sd[f"{prefix}.weight"]
        k = int(w.shape[-1])
        return self.node("Conv", [x, self.constant(f"{prefix}.weight", w),
                                  self.constant(f"{prefix}.bias", self.sd[f"{prefix}.bias"])],
                         prefix, kernel_shape=[k, k], pads=[k // 2] * 4)

    def res_block(self, x: str, prefix: str, res_scale: float = 1.0) -> str:
        """conv -> ReLU -> conv (``{prefix}.body.0`` / ``.2``), times ``res_scale``, plus ``x``."""
        y = self.conv(x, f"{prefix}.body.0")
        y = self.node("Relu", [y], f"{prefix}.relu")
        y = self.conv(y, f"{prefix}.body.2")
        if res_scale != 1.0:
            y = self.node("Mul", [y, self.constant("res_scale", np.asarray(res_scale, np.float32))],
                          f"{prefix}.res_scale")
        return self.node("Add", [x, y], f"{prefix}.add")

    def upsampler(self, x: str, prefix: str, scale: int) -> str:
        """conv to ``features * r * r`` then DepthToSpace (PixelShuffle's order) per stage."""
        for k, r in enumerate(upsample_stages(scale)):
            x = self.conv(x, f"{prefix}.{2 * k}")
            x = self.node("DepthToSpace", [x], f"{prefix}.shuffle{k}", blocksize=r, mode="CRD")
        return x

    def mean(self) -> str:
        rgb = 255.0 * np.asarray(DIV2K_RGB_MEAN, np.float32)
        return self.constant("rgb_mean", rgb.reshape(1, 3, 1, 1))


def _edsr_body(g: _Graph, config: ModelConfig) -> None:
    """EDSR: mean shift, head, blocks, body conv + long skip, upsampler, tail, mean back."""
    x = g.node("Sub", [INPUT, g.mean()], "sub_mean")
    x = g.conv(x, "head.0")
    res = x
    for i in range(config.num_blocks):
        res = g.res_block(res, f"body.{i}", config.res_scale)
    res = g.conv(res, f"body.{config.num_blocks}")
    x = g.node("Add", [x, res], "skip")
    x = g.upsampler(x, "tail.0", config.scale)
    x = g.conv(x, "tail.1")
    g.nodes.append(g.onnx.helper.make_node("Add", [x, g.mean()], [OUTPUT], name="add_mean"))


def _mdsr_body(g: _Graph, config: mdsr.MDSRConfig, scale: int) -> None:
    """MDSR at ``scale``: mean shift, head, that scale's pre-processing (5x5 blocks), shared
    blocks, body conv + long skip, that scale's upsampler, tail, mean back."""
    i = tuple(config.scales).index(scale)
    x = g.node("Sub", [INPUT, g.mean()], "sub_mean")
    x = g.conv(x, "head.0")
    for j in range(mdsr.PRE_PROCESS_BLOCKS):
        x = g.res_block(x, f"pre_process.{i}.{j}")
    res = x
    for b in range(config.num_blocks):
        res = g.res_block(res, f"body.{b}")
    res = g.conv(res, f"body.{config.num_blocks}")
    x = g.node("Add", [x, res], "skip")
    x = g.upsampler(x, f"upsample.{i}", scale)
    x = g.conv(x, "tail.0")
    g.nodes.append(g.onnx.helper.make_node("Add", [x, g.mean()], [OUTPUT], name="add_mean"))
