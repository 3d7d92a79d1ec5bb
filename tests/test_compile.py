"""The train step compiles once: later steps, a new epoch and an evaluation reuse it.

Compilations are counted with a ``jax.monitoring`` listener on JAX's backend-compile event,
which fires for every XLA compilation (also when the persistent cache answers it) and names
the jitted function.
"""

import re

import jax
import numpy as np
import pytest

from conftest import ROOT
from edsr_jax.training import config as config_lib
from edsr_jax.inference.infer import Upscaler
from edsr_jax.training import run
from edsr_jax.training.optim import make_optimizer
from edsr_jax.training.sharding import make_mesh
from edsr_jax.training.state import create_train_state
from edsr_jax.training.step import compile_train_step
from edsr_jax.nets import onednn_conv
from edsr_jax.nets.edsr import ModelConfig

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
TINY = ROOT / "tests" / "configs" / "tiny.py"


class CompileLog:
    """Names of the functions XLA compiled while the ``with`` block ran."""

    def __enter__(self):
        self.names: list[str] = []
        self._listener = lambda event, duration, **kw: (  # noqa: E731
            self.names.append(str(kw.get("fun_name", "?"))) if event == BACKEND_COMPILE else None)
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)

    def count(self, name: str) -> int:
        return sum(name in n for n in self.names)


def _tiny_config(tmp_path, steps: int, eval_every: int):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_config", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.cache_dir = str(ROOT / ".cache" / "test-decoded")
    c.train.steps = steps
    c.train.eval_every = eval_every
    c.train.checkpoint_every = 1000
    c.train.log_every = 1
    return c


def test_listener_sees_a_compilation():
    """The counter itself works: a new jitted function is seen once, a cached call not at all."""
    f = jax.jit(lambda x: x * 3 + 1)
    with CompileLog() as log:
        f(np.arange(5.0))
        f(np.arange(5.0) + 1)
    assert log.count("<lambda>") == 1, log.names


def test_train_compiles_the_step_once_across_epochs_and_evaluation(tmp_path):
    # tiny.py: 6 built-in images x 4 patches / batch 8 = 3 steps an epoch; 7 steps reach a
    # third epoch, and evaluations at steps 3 and 6 (and the last) run in between.
    config = _tiny_config(tmp_path, steps=7, eval_every=3)
    with CompileLog() as log:
        result = run.train(config, tmp_path / "run", upscaler=Upscaler)
    assert np.isfinite(result["psnr"])
    assert log.count("train_step") == 1, log.names


def test_step_cache_holds_one_entry_after_steps_on_new_batches():
    """The jitted step of ``compile_train_step`` keeps one executable when batches and the
    returned (donated) state are fed back in, as the loop does."""
    config = config_lib.base_config()
    model = ModelConfig(2, 1, 8, 1.0).build()
    tx, _ = make_optimizer(config.optim)
    mesh = make_mesh()
    init = lambda key: create_train_state(model, tx, key, use_ema=False)  # noqa: E731
    shape = jax.eval_shape(init, jax.random.key(0))
    step = compile_train_step(model, tx, config, mesh, shape)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.jit(init, out_shardings=replicated)(jax.random.key(0))
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = {"lr": rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8),
                 "hr": rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)}
        state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    if not hasattr(step, "_cache_size"):
        pytest.skip("jitted functions have no _cache_size in this JAX")
    assert step._cache_size() == 1


# ------------------------------------------------------------------ compiler options


def test_cpu_compiler_options_keep_convolutions_out_of_lone_ynnpack_fusions(monkeypatch):
    from edsr_jax.nets import xla_options

    chosen = {"xla_cpu_experimental_ynn_fusion_type":
              "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_options.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert xla_options.compiler_options("gpu") is None
    assert xla_options.compiler_options("cpu", train_batch_per_device=4) == chosen
    assert xla_options.compiler_options("cpu", train_batch_per_device=1) is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_convolution")
    assert xla_options.compiler_options("cpu") is None  # the user's own choice wins


def convolutions(hlo_text: str) -> list[tuple[str, bool]]:
    """(output shape, inside a YNNPACK fusion) for every convolution of an optimised HLO text."""
    bodies = dict(re.findall(r"^(?:ENTRY )?(%\S+) \(.*?\{\n(.*?)\n\}", hlo_text, re.S | re.M))
    ynn_bodies = {m for line in hlo_text.splitlines() if "__ynn_fusion" in line
                  for m in re.findall(r"calls=(%[\w.\-]+)", line)}
    found = []
    for name, body in bodies.items():
        for shape in re.findall(r"= (f32\[[\d,]+\])\S* convolution\(", body):
            found.append((shape, name in ynn_bodies))
    return found


def is_weight_gradient(shape: str, kernel=(3, 3)) -> bool:
    """A weight-gradient convolution outputs the kernel's 3x3 window in two adjacent dims."""
    return ",%d,%d," % kernel in shape


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_train_step_and_inference_compile_with_the_project_options(monkeypatch):
    """The executables really carry the options: in the optimised HLO of the train step no
    weight-gradient convolution is left to YNNPACK (XLA's default compile gives it some), and
    YNNPACK fusions exist (the elementwise ones the options ask for); the inference forward
    pass has no YNNPACK fusion."""
    import jax.numpy as jnp
    import optax

    from edsr_jax.inference import infer

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    config = ModelConfig(scale=2, num_blocks=1, num_features=8)
    model = config.build()
    tx = optax.adam(1e-4)
    cfg = config_lib.base_config()
    cfg.data.batch_size = 2 * jax.device_count()
    mesh = make_mesh()
    init = lambda key: create_train_state(model, tx, key, use_ema=False)  # noqa: E731
    shape = jax.eval_shape(init, jax.random.key(0))
    n = cfg.data.batch_size
    batch = {"lr": jax.ShapeDtypeStruct((n, 8, 8, 3), jnp.uint8),
             "hr": jax.ShapeDtypeStruct((n, 16, 16, 3), jnp.uint8)}

    def hlo(compiler_options=None):
        step = compile_train_step(model, tx, cfg, mesh, shape, compiler_options)
        return step.lower(shape, batch).compile().as_text()

    default = [c for c in convolutions(hlo({})) if is_weight_gradient(c[0])]
    ours_text = hlo()
    ours = [c for c in convolutions(ours_text) if is_weight_gradient(c[0])]
    assert len(ours) == 6  # head, the block's two convs, body, upsampler, tail
    assert not any(in_ynn for _, in_ynn in ours), ours
    assert "__ynn_fusion" in ours_text
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    bounds = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    text = infer.jitted(config).lower(params, x, bounds).compile().as_text()
    assert "__ynn_fusion" not in text  # inference: no YNNPACK at all
    if onednn_conv.available():  # inference convolutions: oneDNN's (float32, CPU), 6 of them
        assert not convolutions(text) and text.count('custom_call_target="edsr_conv_forward"') == 6
    else:
        assert len(convolutions(text)) == 6
    if not any(in_ynn for _, in_ynn in default):
        pytest.skip("XLA's defaults give no weight gradient to YNNPACK here (another jaxlib or "
                    "CPU): the checks above could not fail; revisit edsr_jax/nets/xla_options.py")
