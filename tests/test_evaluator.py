"""The evaluator: validation pairs, the papers' scoring, skipping what cannot be scored, panels."""

import numpy as np
import pytest

from edsr_jax.evaluation import evaluator
from edsr_jax.io.images import ImageError, read_rgb, write_image
from edsr_jax.degradation.imresize import imresize


def make_hr(folder, sizes, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k, (h, w) in enumerate(sizes):
        small = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)
        write_image(folder / f"img{k:02d}.png", imresize(small, output_shape=(h, w)))
    return folder


def test_pairs_from_a_folder_are_the_papers_protocol(tmp_path):
    folder = make_hr(tmp_path / "hr", [(41, 46), (36, 37)])
    ev = evaluator.Evaluator.from_images(folder, 3)
    assert [p.name for p in ev.pairs] == ["img00.png", "img01.png"] and ev.degradation == "bicubic(3)"
    for name, lr, hr in ev.pairs:
        full = read_rgb(folder / name)
        h, w = full.shape[0] // 3, full.shape[1] // 3
        np.testing.assert_array_equal(hr, full[: 3 * h, : 3 * w])
        np.testing.assert_array_equal(lr, imresize(hr, 1 / 3))
    assert len(evaluator.Evaluator.from_images(folder, 3, max_images=1).pairs) == 1
    # A degradation spec is applied with a fixed per-image seed: bicubic(3) is the default's LR.
    spec = evaluator.Evaluator.from_images(folder, 3, spec="bicubic(3)")
    np.testing.assert_array_equal(spec.pairs[0].lr, ev.pairs[0].lr)
    noisy = [evaluator.Evaluator.from_images(folder, 3, spec="bicubic > noise(5)") for _ in range(2)]
    np.testing.assert_array_equal(noisy[0].pairs[1].lr, noisy[1].pairs[1].lr)
    assert not np.array_equal(noisy[0].pairs[1].lr, ev.pairs[1].lr)


def test_images_too_small_or_unreadable_are_skipped_and_none_left_is_an_error(tmp_path):
    # At x2 the smallest scorable side is 2 * 2 + 11 = 15 (the SSIM window after the border).
    assert evaluator.min_side(2) == 15
    folder = make_hr(tmp_path / "hr", [(16, 16), (14, 40), (40, 40)])
    (folder / "zz_broken.png").write_bytes(b"not an image")
    said = []
    ev = evaluator.Evaluator.from_images(folder, 2, report=said.append)
    assert [p.name for p in ev.pairs] == ["img00.png", "img02.png"]
    assert len(said) == 2 and "img01.png: 40x14 pixels is too small to score at x2" in said[0]
    assert "zz_broken.png: not a readable image" in said[1]
    # The CLI's streaming evaluation skips exactly the same images.
    r = evaluator.evaluate_folder(folder, 2, evaluator.bicubic_upscale, "bicubic", progress=False, warn=False)
    assert [x["image"] for x in r["per_image"]] == ["img00.png", "img02.png"]
    assert sorted(f["image"].rsplit("/", 1)[-1] for f in r["failed"]) == ["img01.png", "zz_broken.png"]
    with pytest.raises(ImageError, match=r"hr: no image can be scored at x4"):
        evaluator.Evaluator.from_images(folder, 4, max_images=2, report=said.append)
    with pytest.raises(ImageError, match="no such folder"):
        evaluator.Evaluator.from_images(tmp_path / "missing", 2)


def test_evaluator_scores_match_score_image_and_the_baseline_is_bicubic(tmp_path):
    folder = make_hr(tmp_path / "hr", [(40, 36), (44, 48)])
    ev = evaluator.Evaluator.from_images(folder, 2)

    def nearest(lr, scale):
        return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)

    r = ev(nearest, "nearest")
    expect = [evaluator.score_image(hr, 2, nearest)[:2] for _, _, hr in ev.pairs]
    assert r["images"] == 2
    assert r["psnr"] == pytest.approx(np.mean([e[0] for e in expect]), abs=1e-12)
    assert r["ssim"] == pytest.approx(np.mean([e[1] for e in expect]), abs=1e-12)
    assert [x["image"] for x in r["per_image"]] == ["img00.png", "img01.png"]
    # The panel is LR (nearest) | bicubic | SR | HR of the first image, 4-pixel gaps.
    assert r["panel"].shape == (40, 4 * 36 + 3 * evaluator.PANEL_GAP, 3) and r["panel"].dtype == np.uint8
    bic = ev(evaluator.bicubic_upscale, "bicubic")
    assert ev.baseline == {"bicubic_psnr": bic["psnr"], "bicubic_ssim": bic["ssim"]}
    assert ev.baseline["bicubic_psnr"] > r["psnr"]  # bicubic beats nearest on smooth images


def test_pre_made_lr_pairs_are_scored_as_given():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    lr = hr[::2, ::2].copy()  # not the bicubic LR
    ev = evaluator.Evaluator([evaluator.Pair("x.png", lr, hr)], 2, degradation="nearest")
    seen = []
    ev(lambda x, s: seen.append(x) or evaluator.bicubic_upscale(x, s))
    np.testing.assert_array_equal(seen[0], lr)
    with pytest.raises(ValueError, match="at least one pair"):
        evaluator.Evaluator([], 2)


def test_from_images_with_premade_lr_files(tmp_path):
    """The trainer's Evaluator takes pre-made LR files too (``lr_dir``): pairs as given, the
    HR cut to LR * scale; a missing LR file is skipped like an unreadable image."""
    hr_dir = make_hr(tmp_path / "HR", [(41, 46), (36, 37)])
    lr_dir = tmp_path / "LR" / "X2"
    for p in sorted(hr_dir.iterdir())[:1]:
        hr = read_rgb(p)
        write_image(lr_dir / f"{p.stem}x2.png", hr[:40:2, :46:2])
    said = []
    ev = evaluator.Evaluator.from_images(hr_dir, 2, lr_dir=evaluator.lr_folder(tmp_path / "LR", 2),
                                         report=said.append, y_channel=False)
    assert [p.name for p in ev.pairs] == ["img00.png"] and ev.y_channel is False
    np.testing.assert_array_equal(ev.pairs[0].lr, read_rgb(hr_dir / "img00.png")[:40:2, :46:2])
    assert ev.pairs[0].hr.shape == (40, 46, 3) and ev.degradation.startswith("files in")
    assert len(said) == 1 and "img01x2.png: no LR image for" in said[0]
