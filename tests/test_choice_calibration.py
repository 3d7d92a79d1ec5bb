"""``--model auto``'s calibration (``inference/calibration.py``): the model that scored best on
the calibration images diagnosed most like an image, used only for the models it measured."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edsr_jax
from edsr_jax.data import posters, samples
from edsr_jax.degradation import degrade
from edsr_jax.evaluation.estimators import flat_share, two_level_share
from edsr_jax.evaluation.jpeg_quality import luma
from edsr_jax.inference import calibration, choice, pretrained
from edsr_jax.io.images import read_rgb

MODELS = ("photo-x2", "poster-x2", "general-x2")


def table(k=3):
    """Two clusters: filtered, clean photographs (photo-x2 best by 2 dB) and pixel-dropped
    drawn images (poster-x2 best by 1 dB on all but one, where general-x2 wins)."""
    photos = np.array([[0.1, 0, 0, 0, 0.2, 0], [0.15, 0, 0, 0, 0.25, 0], [0.2, 0, 0, 0, 0.2, 0]])
    drawn = np.array([[0.9, 0, 0, 0, 0.6, 0.5], [0.95, 0, 0, 0, 0.5, 0.5], [0.85, 0, 0, 0, 0.55, 0.4]])
    psnr = np.array([[32, 28, 30], [33, 29, 31], [31, 27, 29],
                     [20, 25, 24], [21, 26, 25], [20, 24, 24.5]], np.float64)
    return calibration.Calibration(2, MODELS, np.vstack([photos, drawn]), psnr, k, (1, 1, 1, 1, 1, 1))


def options(content=True):
    """The three x2 candidates; ``content``: their cards say what their training images show."""
    seen = {"photo-x2": ["photographs"], "poster-x2": ["drawn"], "general-x2": ["photographs", "drawn"]}
    return [choice.Candidate.from_spec(name, spec, 2, seen[name] if content else ())
            for name, spec in (("photo-x2", "bicubic"), ("poster-x2", "nearest > jpeg(30,60)"),
                               ("general-x2", "bicubic | nearest > jpeg(30,60) | bicubic > noise(0,8)"))]


def test_rank_takes_the_best_mean_over_the_nearest_images_and_counts_wins():
    cal = table()
    r = cal.rank(np.array([0.9, 0, 0, 0, 0.55, 0.45]))
    assert list(r.means) == ["poster-x2", "general-x2", "photo-x2"] and r.k == 3
    assert r.means["poster-x2"] == pytest.approx(25.0) and r.wins == {"poster-x2": 2, "general-x2": 1, "photo-x2": 0}
    assert cal.rank(np.array([0.1, 0, 0, 0, 0.2, 0])).best == "photo-x2"
    # leaving out the photographs: the nearest three are the drawn images
    assert cal.rank(np.array([0.1, 0, 0, 0, 0.2, 0]), exclude=np.arange(6) < 3).best == "poster-x2"


def test_an_uncertain_choice_takes_the_calibrations_model_for_the_models_it_measured():
    cal = table()
    # pixel dropping with JPEG: certain for poster-x2 by its training damage, the calibration unused
    c = choice.choose(choice.Seen(0.92, 45, 0.9, flat=0.2), options(), 2, calibration=cal)
    assert c.model == "poster-x2" and not c.uncertain and "calibrated" not in c.record()
    assert c.reason.endswith("nearest to 'nearest > jpeg(30,60)'")
    # unclear resampling and noise: uncertain; the drawn-looking neighbours' best, not the general model
    seen = choice.Seen(0.75, None, 0.9, noise=6.0, noise_confidence=0.9, flat=0.6, two_level=0.45)
    assert choice.choose(seen, options(), 2).model == "general-x2"
    c = choice.choose(seen, options(), 2, calibration=cal)
    assert c.model == "poster-x2" and c.uncertain
    assert c.reason.startswith("uncertain: pixel dropping p=0.75, no JPEG, noise 6.0, two-level tiles 0.45; nearest ")
    assert c.reason.endswith("; best on 2 of the 3 calibration images diagnosed most like it, +0.50 dB over general-x2")
    assert c.record()["calibrated"] == {"k": 3, "mean_psnr": {"poster-x2": 25.0, "general-x2": 24.5,
                                                              "photo-x2": 20.333}, "wins": c.calibrated["wins"]}
    # another set of models (one added or renamed): the general model, as without a calibration
    c = choice.choose(seen, options()[::2], 2, calibration=cal)
    assert c.model == "general-x2" and "calibrated" not in c.record()
    assert not cal.covers([o.name for o in options()], 3)  # another scale
    # not diagnosed: the general model, as without a calibration
    assert choice.choose(None, options(), 2, not_diagnosed="too small", calibration=cal).model == "general-x2"


def test_stored_calibration_round_trips_and_a_bad_file_is_named(tmp_path):
    cal = table()
    (tmp_path / calibration.FILE).write_text(json.dumps(cal.to_json()))
    back = calibration.load(tmp_path)
    assert back.models == cal.models and back.k == cal.k and np.allclose(back.psnr, cal.psnr)
    assert np.allclose(back.features, cal.features)
    assert calibration.load(tmp_path / "none") is None
    data = cal.to_json()
    data["rows"][0] = data["rows"][0][:-1]
    (tmp_path / calibration.FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"choice_calibration\.json: .*rows must be N x 9"):
        calibration.load(tmp_path)


def test_the_shipped_calibration_measured_exactly_the_built_in_models():
    """Re-run experiments/auto_choice.py --write when a built-in model is added, retrained or
    renamed: until then auto falls back to the distance rule for it, and this test fails."""
    cal = calibration.load()
    assert cal is not None and cal.scale == 2
    assert cal.covers([c.name for c in choice.candidates(2)], 2), (cal.models, pretrained.names())
    assert cal.features.shape == (len(cal.psnr), len(calibration.FEATURES)) and len(cal.psnr) >= 300
    auto = edsr_jax.AutoUpscaler(2)
    assert auto.calibration is not None
    # a noisy photograph: uncertain by the distance rule, so the calibration chooses, and says so
    photo = read_rgb(samples.builtin_images("train")[1])[:256, :256]
    lr = degrade.parse("bicubic > noise(5)", scale=2)(photo, np.random.default_rng(1))
    c = auto.choose(lr, "noisy")
    assert c.uncertain and c.calibrated["k"] == cal.k and "calibration images diagnosed most like it" in c.reason


def test_flat_share_reads_drawn_content_and_allows_for_noise():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 120.0)
    noisy = flat + rng.normal(0, 5, flat.shape)
    assert flat_share(flat) == 1.0
    assert flat_share(noisy) < 0.05 and flat_share(noisy, noise=5.0) > 0.95
    assert np.isnan(flat_share(flat[:3]))
    photos = [read_rgb(p) for p in samples.builtin_images("train")[:3]]
    poster = posters.render(3, 0, (512, 384), photos=photos[:1])
    lr = lambda im: degrade.parse("bicubic", scale=2)(im[: im.shape[0] // 2 * 2, : im.shape[1] // 2 * 2],  # noqa: E731
                                                      np.random.default_rng(0))
    assert flat_share(luma(lr(poster))) > max(flat_share(luma(lr(p))) for p in photos) + 0.1


def test_drawn_content_goes_to_the_calibration_even_when_a_specialist_matches():
    """A filtered downscale without JPEG is photo-x2's training damage, but photo-x2 never saw
    drawn content: an image whose two-level share reaches choice.DRAWN is decided by the
    calibration (here its drawn neighbours prefer general-x2), said so, and not called uncertain;
    without a calibration it takes the general model (x4: general-x4 over photo-x4)."""
    photos = [[0.1, 0, 0, 0, 0.2, 0.0], [0.12, 0, 0, 0, 0.25, 0.01], [0.08, 0, 0, 0, 0.2, 0.0]]
    drawn = [[0.1, 0, 0, 0, 0.5, 0.3], [0.12, 0, 0, 0, 0.55, 0.35], [0.08, 0, 0, 0, 0.45, 0.25]]
    psnr = np.array([[33, 28, 31]] * 3 + [[29, 27, 31]] * 3, np.float64)
    cal = calibration.Calibration(2, MODELS, np.array(photos + drawn, np.float64), psnr, 3, (1, 1, 1, 1, 1, 1))
    photo = choice.Seen(0.1, None, 1.0, flat=0.2, two_level=0.01)
    c = choice.choose(photo, options(), 2, calibration=cal)
    assert c.model == "photo-x2" and not c.uncertain and "calibrated" not in c.record()
    poster = choice.Seen(0.1, None, 1.0, flat=0.5, two_level=0.3)
    c = choice.choose(poster, options(), 2)  # without a calibration: the general model, said why
    assert (c.model, c.uncertain) == ("general-x2", False) and c.reason.startswith("drawn content: ")
    assert c.reason.endswith("; the general model")
    # the distance rule where no general model exists, or no card says photo-x2 saw photographs only
    assert choice.choose(poster, [o for o in options() if not o.general], 2).model == "photo-x2"
    assert choice.choose(poster, options(content=False), 2).model == "photo-x2"
    pixels_dropped = choice.Seen(0.95, 45, 1.0, flat=0.5, two_level=0.3)  # poster-x2 saw drawn content: kept
    assert choice.choose(pixels_dropped, options(), 2).model == "poster-x2"
    c = choice.choose(poster, options(), 2, calibration=cal)
    assert c.model == "general-x2" and not c.uncertain and c.calibrated["wins"]["general-x2"] == 3
    assert c.reason.startswith("drawn content: filtered downscale p=0.90, no JPEG, two-level tiles 0.30; "
                               "nearest photo-x2 at confidence ")
    assert c.reason.endswith("best on 3 of the 3 calibration images diagnosed most like it, +2.00 dB over photo-x2")
    unmeasured = choice.Seen(0.1, None, 1.0, flat=0.5)  # NaN: not drawn
    assert choice.choose(unmeasured, options(), 2, calibration=cal).model == "photo-x2"
    assert choice.DRAWN > 0.01  # the photograph's 0.01 is below it


def test_two_level_share_reads_text_and_shapes_not_texture():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 120.0)
    assert two_level_share(flat) == 0.0  # no busy tile
    stripes = np.where((np.arange(64) // 3) % 2 == 0, 30.0, 220.0)[None, :].repeat(64, axis=0)
    assert two_level_share(stripes) == 1.0  # two levels exactly
    texture = flat + rng.normal(0, 20, flat.shape)
    assert two_level_share(texture) == 0.0  # busy, not two-level
    assert two_level_share(stripes + rng.normal(0, 3, flat.shape)) > 0.9
    photos = [read_rgb(p) for p in samples.builtin_images("train")[:3]]
    poster = posters.render(3, 0, (512, 384), photos=photos[:1])
    for spec in ("bicubic", "bicubic > noise(5)", "nearest > jpeg(30,60)"):
        lr = lambda im: degrade.parse(spec, scale=2)(im[: im.shape[0] // 2 * 2, : im.shape[1] // 2 * 2],  # noqa: E731
                                                     np.random.default_rng(0))
        shares = [two_level_share(luma(lr(p))) for p in photos]
        assert max(shares) < choice.DRAWN <= two_level_share(luma(lr(poster))), (spec, shares)
