"""Blends of built-in models (``inference/blend.py``): ``--model A+B`` is the mean of the models'
outputs, in ``upscale``, ``evaluate``, the Python API, and ``--model auto``'s calibrated choice.

The reference for a blend is the float64 mean of its members' own float32 outputs: the blend sums
float32 arrays and divides by the count, so the two agree to float32 rounding (rtol 1e-6 of values
up to 255, i.e. under 3e-4), and the uint8 outputs equal where the rounding of that mean is not
within 1e-3 of a half (checked on every pixel that is not)."""

import json

import numpy as np
import pytest

from edsr_jax import evaluate, upscale
from edsr_jax.inference import blend, calibration, choice, pretrained
from edsr_jax.io import cli
from edsr_jax.io.images import read_rgb, write_image

from conftest import assert_documented_rows, pack_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A folder of tiny models: a and b at x2 (different weights), c at x3."""
    folder = tmp_path_factory.mktemp("blend_models")
    pack_tiny_model(folder, "tiny-a-x2", 2, "bicubic", 1)
    pack_tiny_model(folder, "tiny-b-x2", 2, "nearest > jpeg(30,60)", 2)
    pack_tiny_model(folder, "tiny-g-x2", 2, "bicubic | nearest > jpeg(30,60)", 4)
    pack_tiny_model(folder, "tiny-c-x3", 3, "bicubic", 3)
    return folder


def lr_image(h=20, w=28, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_members_names_and_errors():
    assert blend.members("photo-x2+general-x2") == ("photo-x2", "general-x2")
    assert blend.members("photo-x2") == ("photo-x2",) and not blend.is_blend("photo-x2")
    assert blend.is_blend("a+b")
    with pytest.raises(ValueError, match="none of them empty"):
        blend.members("photo-x2+")
    with pytest.raises(ValueError, match="each model once"):
        blend.members("photo-x2+photo-x2")


def test_a_blend_is_the_mean_of_its_members_outputs(models):
    a = blend.from_pretrained("tiny-a-x2", models)
    b = blend.from_pretrained("tiny-b-x2", models)
    ab = blend.from_pretrained("tiny-a-x2+tiny-b-x2", models)
    assert isinstance(ab, blend.Blend) and ab.name == "tiny-a-x2+tiny-b-x2" and ab.scale == 2
    for lr in (lr_image(), np.stack([lr_image(seed=1), lr_image(seed=2)])):  # one image, and a batch
        ya, yb = a.predict(lr).astype(np.float64), b.predict(lr).astype(np.float64)
        assert np.abs(ya - yb).max() > 1.0  # the members differ, so the test can fail
        want = (ya + yb) / 2
        got = ab.predict(lr)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
        out = ab(lr)
        clear = np.abs(want - np.floor(want) - 0.5) > 1e-3
        assert out.dtype == np.uint8
        assert np.array_equal(out[clear], np.clip(np.rint(want), 0, 255).astype(np.uint8)[clear])


def test_a_blend_counts_every_members_passes_and_tiles_like_them(models):
    a, b = (blend.from_pretrained(n, models, tile=16) for n in ("tiny-a-x2", "tiny-b-x2"))
    ab = blend.Blend([a, b])
    lr = lr_image(40, 50)
    assert ab.passes(40, 50) == a.passes(40, 50) + b.passes(40, 50) > 2  # tiled: several passes each
    ticks = []
    ab.predict(lr, lambda done, total: ticks.append((done, total)))
    total = ab.passes(40, 50)
    assert [d for d, _ in ticks] == list(range(1, total + 1)) and {t for _, t in ticks} == {total}
    # tiled members: the same mean as whole-image members (tiles are exact)
    whole = blend.from_pretrained("tiny-a-x2+tiny-b-x2", models)
    np.testing.assert_allclose(ab.predict(lr), whole.predict(lr), rtol=1e-5, atol=1e-3)


def test_a_blend_of_other_scales_or_unknown_models_is_refused(models):
    with pytest.raises(ValueError, match="one factor: tiny-a-x2 x2, tiny-c-x3 x3"):
        blend.from_pretrained("tiny-a-x2+tiny-c-x3", models)
    with pytest.raises(ValueError, match="nope"):
        blend.from_pretrained("tiny-a-x2+nope", models)
    with pytest.raises(ValueError, match="two or more"):
        blend.Blend([blend.from_pretrained("tiny-a-x2", models)])


def test_auto_runs_a_calibrated_blend_from_its_loaded_members(models):
    """A calibration whose best column for an image is a blend: the choice names the blend and
    says it is a mean; AutoUpscaler runs it from the models it already loaded."""
    names = ("tiny-a-x2", "tiny-b-x2", "tiny-g-x2", "tiny-a-x2+tiny-g-x2")
    feats = np.array([[0.5, 0, 0, 0.6, 0.2, 0], [0.55, 0, 0, 0.5, 0.25, 0], [0.0, 0, 0, 0, 0.2, 0]])
    psnr = np.array([[29.0, 27.0, 29.5, 30.0], [29.2, 27.0, 29.4, 30.1], [33.0, 27.0, 31.0, 32.0]])
    cal = calibration.Calibration(2, names, feats, psnr, 2, (1, 1, 1, 1, 1, 1))
    options = [c for c in choice.candidates(2, models)]
    assert cal.covers([c.name for c in options], 2)
    assert not cal.covers(["tiny-a-x2", "tiny-g-x2"], 2)  # a model measured only inside a blend is still one
    seen = choice.Seen(0.5, None, 0.9, noise=5.5, noise_confidence=0.9, flat=0.2)
    c = choice.choose(seen, options, 2, calibration=cal)
    assert c.model == "tiny-a-x2+tiny-g-x2" and c.uncertain
    assert c.reason.endswith("+0.60 dB over tiny-g-x2; the mean of tiny-a-x2 and tiny-g-x2's outputs")
    assert c.record()["calibrated"]["mean_psnr"]["tiny-a-x2+tiny-g-x2"] == pytest.approx(30.05)
    (models / calibration.FILE).write_text(json.dumps(cal.to_json()))
    try:
        auto = choice.AutoUpscaler(2, models_dir=models)
        up = auto.upscaler(c.model)
        assert isinstance(up, blend.Blend) and up.members == [auto.upscaler("tiny-a-x2"), auto.upscaler("tiny-g-x2")]
        assert auto.upscaler(c.model) is up
        lr = lr_image()
        np.testing.assert_allclose(up.predict(lr), (auto.upscaler("tiny-a-x2").predict(lr).astype(np.float64)
                                                    + auto.upscaler("tiny-g-x2").predict(lr)) / 2,
                                   rtol=1e-6, atol=1e-4)
    finally:
        (models / calibration.FILE).unlink()


def test_upscale_and_evaluate_take_a_blend_of_built_in_models(tmp_path, capsys):
    hr = read_rgb(_sample())[:64, :80]
    lr = hr[::2, ::2].copy()
    write_image(tmp_path / "in" / "a.png", lr)
    assert cli.run(upscale.main, [str(tmp_path / "in"), "--model", "photo-x2+general-x2", "--out",
                                  str(tmp_path / "out"), "--json", str(tmp_path / "u.json")]) == 0
    want = blend.from_pretrained("photo-x2+general-x2")(lr)
    assert np.array_equal(read_rgb(tmp_path / "out" / "a.png"), want)
    assert json.loads((tmp_path / "u.json").read_text())["inputs"][0]["model"] == "photo-x2+general-x2"
    write_image(tmp_path / "set" / "a.png", hr)
    assert cli.run(evaluate.main, ["--model", "photo-x2", "photo-x2+general-x2", str(tmp_path / "set"),
                                   "--json", str(tmp_path / "e.json")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "e.json").read_text())["results"]}
    assert list(rows) == ["photo-x2", "photo-x2+general-x2"] and rows["photo-x2+general-x2"]["images"] == 1
    assert rows["photo-x2+general-x2"]["psnr"] != rows["photo-x2"]["psnr"]
    capsys.readouterr()
    assert cli.run(upscale.main, [str(tmp_path / "in"), "--model", "photo-x2+photo-x3", "--out",
                                  str(tmp_path / "out2")]) == 2
    assert "error: --model photo-x2+photo-x3: a blend's models must upscale by one factor" in capsys.readouterr().err
    assert cli.run(evaluate.main, ["--model", "photo-x2+photo-x2", str(tmp_path / "set")]) == 2
    assert "error: --model photo-x2+photo-x2: 'photo-x2+photo-x2': a blend names each model once" in \
        capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_the_model_list_names_blends(capsys):
    from edsr_jax import pretrained as command

    assert cli.run(command.main, []) == 0
    assert "\nA+B: a blend, the mean of the named models' outputs" in capsys.readouterr().out


def _sample():
    from edsr_jax.data import samples

    return samples.builtin_images("val")[0]


BAD_INPUTS = ("`--model A+B` whose models upscale by different factors, or that names a model twice",)


def test_bad_inputs_are_documented():
    assert_documented_rows(BAD_INPUTS)
