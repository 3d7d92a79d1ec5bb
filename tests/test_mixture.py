"""Mixtures of degradation chains (``"a | b"``, ``degrade.Mixture``): the parse, the host's
draw, the device's draw against the host's operators, and a train step on a mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax.degradation import degrade
from edsr_jax.degradation.degrade import Mixture, Pipeline, SpecError
from edsr_jax.degradation.device import degrade_batch, validate_spec


def _hr(n=64, size=24, seed=0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    hr[:, : size // 2] = np.linspace(0, 255, size, dtype=np.uint8)[None, None, :, None]
    return hr


def test_parse_gives_a_mixture_whose_text_parses_back():
    mix = degrade.parse("bicubic | nearest > jpeg(30,60) |blur(0.5,2)>bilinear", scale=2)
    assert isinstance(mix, Mixture) and len(mix.alternatives) == 3
    assert all(isinstance(p, Pipeline) for p in mix.alternatives)
    assert mix.spec == "bicubic(2) | nearest(2) > jpeg(30,60) | blur(0.5,2) > bilinear(2)"
    assert degrade.parse(mix.spec) == mix
    assert mix.scale == 2
    assert mix.margin == max(p.margin for p in mix.alternatives)
    # a chain without '|' is still a Pipeline
    assert isinstance(degrade.parse("bicubic", scale=3), Pipeline)


def test_symmetries_are_those_every_alternative_keeps():
    assert degrade.parse("bicubic(2) | nearest(2)").symmetries == degrade.parse("nearest(2)").symmetries
    assert degrade.parse("bicubic(2) | blur(1) > bilinear(2)").symmetries == tuple(range(8))


@pytest.mark.parametrize("spec, words", [
    ("bicubic(2) | nearest(3)", "same factor"),
    ("bicubic(2) | ", "alternative 2"),
    ("| bicubic(2)", "alternative 1"),
    ("bicubic(2) | nearest(2) > jpg(30)", "alternative 2"),
    ("bicubic(2) | nearest(2) > jpeg(300)", "quality"),
])
def test_bad_mixtures_are_named(spec, words):
    with pytest.raises(SpecError, match=words):
        degrade.parse(spec)


def test_host_draw_runs_the_chosen_alternative_with_its_parameters():
    mix = degrade.parse("bicubic(2) | nearest(2) > jpeg(40,80) | bilinear(2) > noise(2,4)")
    hr = _hr(1, 32)[0]
    seen = set()
    for seed in range(60):
        lr, params = mix(hr, np.random.default_rng(seed), return_params=True)
        first = params[0]
        assert first["op"] == "choose" and first["of"] == 3
        alt = mix.alternatives[first["alternative"]]
        # the same draw, replayed through the alternative alone: params[1:] are its own
        rng = np.random.default_rng(seed)
        rng.integers(3)  # the alternative's draw comes first
        want = alt(hr, rng)
        np.testing.assert_array_equal(lr, want)
        seen.add(first["alternative"])
    assert seen == {0, 1, 2}


def test_host_choice_is_uniform():
    mix = degrade.parse("bicubic(2) | nearest(2) | bilinear(2) | blur(1) > bicubic(2)")
    counts = np.bincount([mix.sample(np.random.default_rng(s))[0]["alternative"] for s in range(2000)],
                         minlength=4)
    # 2000 draws of 4 equal cells: each ~500 with std ~19; 5 std is far outside chance.
    assert np.all(np.abs(counts - 500) < 100), counts


def test_apply_refuses_parameters_without_the_choice():
    mix = degrade.parse("bicubic(2) | nearest(2)")
    with pytest.raises(ValueError, match="chosen alternative"):
        mix.apply(_hr(1, 8)[0], [{"op": "bicubic", "scale": 2}], np.random.default_rng(0))


def test_device_mixture_gives_each_sample_one_of_the_hosts_alternatives():
    """Deterministic resizes are bit-exact on the device (device_resize); so each sample of the
    device's mixture must equal one alternative's host LR exactly, and both must occur."""
    hr = _hr(64, 24)
    specs = ("bicubic(2)", "nearest(2)", "bilinear(2)")
    host = {s: np.stack([degrade.parse(s)(h, np.random.default_rng(0)) for h in hr]) for s in specs}
    keys = jax.random.split(jax.random.key(5), len(hr))
    lr = np.asarray(degrade_batch(" | ".join(specs), jnp.asarray(hr), keys))
    which = []
    for i in range(len(hr)):
        hits = [s for s in specs if np.array_equal(lr[i], host[s][i])]
        assert hits, f"sample {i} is none of the alternatives"
        which.append(hits[0])
    counts = {s: which.count(s) for s in specs}
    assert all(c >= 8 for c in counts.values()), counts  # 64 draws of 3: ~21 each


def test_device_mixture_sample_depends_on_its_key_only():
    hr = _hr(8, 24)
    spec = "bicubic(2) | nearest(2) > noise(3) | bilinear(2) > jpeg(30,60)"
    keys = jax.random.split(jax.random.key(1), 8)
    whole = np.asarray(degrade_batch(spec, jnp.asarray(hr), keys))
    perm = np.array([5, 2, 7, 0, 1, 6, 3, 4])
    shuffled = np.asarray(degrade_batch(spec, jnp.asarray(hr[perm]), keys[perm]))
    np.testing.assert_array_equal(shuffled, whole[perm])
    half = np.asarray(degrade_batch(spec, jnp.asarray(hr[:4]), keys[:4]))
    np.testing.assert_array_equal(half, whole[:4])


def test_validate_spec_checks_every_alternative(monkeypatch):
    from edsr_jax.degradation import device

    monkeypatch.delitem(device.RUNNERS, "jpeg")
    device.validate_spec.cache_clear()
    try:
        with pytest.raises(SpecError, match="jpeg"):
            validate_spec("bicubic(2) | nearest(2) > jpeg(30,60)")
    finally:
        device.validate_spec.cache_clear()


def test_the_train_steps_damage_runs_a_mixture_per_patch():
    """DeviceDamage (the trainer's LR made in the step) on a mixture: each patch, under its flip
    or turn, gets one alternative's LR of the host, bit for bit."""
    from edsr_jax.data import blocks, sources
    from edsr_jax.training.step import DeviceDamage

    hr = _hr(32, 24)
    k = np.random.default_rng(1).integers(0, 8, len(hr)).astype(np.int32)
    batch = {"hr": jnp.asarray(hr), "symmetry": jnp.asarray(k),
             "index": jnp.asarray(blocks.index_words(np.arange(len(hr), dtype=np.int64)))}
    lr, hr_t = jax.jit(DeviceDamage("bicubic | nearest", 2, seed=0))(batch)
    kinds = set()
    for i in range(len(hr)):
        want_hr = np.ascontiguousarray(sources.symmetry(hr[i], int(k[i])))
        np.testing.assert_array_equal(np.asarray(hr_t[i]), want_hr)
        hits = [s for s in ("bicubic(2)", "nearest(2)")
                if np.array_equal(np.asarray(lr[i]), degrade.parse(s)(want_hr, np.random.default_rng(0)))]
        assert hits, i
        kinds.add(hits[0])
    assert kinds == {"bicubic(2)", "nearest(2)"}
