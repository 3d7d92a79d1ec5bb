"""``--model auto`` (edsr_jax/inference/choice.py): the built-in model chosen per image from the
damage diagnosed in it. The choice on LR images of known damage (made with ``degrade.parse``
from the built-in photographs and a generated poster), the uncertain and undiagnosable cases
(the general model, or the nearest specialist said uncertain where there is none), the cache,
videos, and the commands: upscale's default and its announcement, ``--json``, evaluate's row.

Choice tests run against tiny models packed into a private folder (``models_dir``), so they
hold whether or not a general model ships; the command tests use the shipped specialists on
cases the choice is certain of, which a shipped general model does not change."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import edsr_jax
from edsr_jax import evaluate, upscale
from edsr_jax.data import posters, samples
from edsr_jax.degradation import degrade
from edsr_jax.evaluation.jpeg_quality import luma
from edsr_jax.inference import blend, choice, infer, pretrained, video
from edsr_jax.io import cli
from edsr_jax.io.images import read_rgb, write_image

from conftest import assert_documented_rows, pack_tiny_model

GENERAL = "bicubic | nearest > jpeg(30,90) | blur(0.5,2) > bilinear > noise(1,10)"
TINY = {"tiny-photo-x2": (2, "bicubic"), "tiny-poster-x2": (2, "nearest > jpeg(30,60)"),
        "tiny-photo-x3": (3, "bicubic")}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """``(specialists, with_general)``: folders of tiny models, the second with a general x2."""
    root = tmp_path_factory.mktemp("models")
    specialists, with_general = root / "specialists", root / "with_general"
    for name, (scale, spec) in TINY.items():
        pack_tiny_model(specialists, name, scale, spec, seed=scale)
        pack_tiny_model(with_general, name, scale, spec, seed=scale)
    pack_tiny_model(with_general, "tiny-general-x2", 2, GENERAL, seed=2)
    return specialists, with_general


@pytest.fixture(scope="module")
def hr_images():
    """Three HR images: two built-in photographs (cut to 192 x 256) and a generated poster."""
    photos = [read_rgb(p) for p in samples.builtin_images("val")]
    poster = posters.render(5, 0, (256, 192), photos=photos[:1])
    return {"chelsea": photos[0][:192, :256], "coffee": photos[1][:192, :256], "poster": poster}


def damaged(hr, spec, name):
    """LR made from ``hr`` by ``spec`` at x2, seeded by ``name``."""
    return degrade.parse(spec, scale=2)(hr, degrade.image_rng(name))


def test_shipped_cards_name_their_training_damage():
    for name in pretrained.names():
        info = pretrained.card(name)
        spec = pretrained.training_spec(info)
        assert spec is not None, f"{name}: its card lacks training.spec"
        degrade.parse(spec, scale=info["model"]["scale"])
    assert pretrained.training_spec(pretrained.card("photo-x2")) == "bicubic"
    assert pretrained.training_spec(pretrained.card("poster-x2")) == "nearest > jpeg(30,60)"
    by_name = {c.name: c for c in choice.candidates(2)}
    assert not by_name["photo-x2"].general and by_name["poster-x2"].damages == (
        choice.Damage("nearest", jpeg=(30, 60)),)
    assert [c.name for c in choice.candidates(3)] == ["photo-x3"]


def test_pack_stores_and_checks_the_training_spec(model_dirs, tmp_path):
    specialists, with_general = model_dirs
    assert pretrained.card("tiny-poster-x2", specialists)["training"]["spec"] == "nearest > jpeg(30,60)"
    general = choice.Candidate.from_spec("g", pretrained.training_spec(pretrained.card("tiny-general-x2",
                                                                                         with_general)), 2)
    assert general.general and general.damages[2] == choice.Damage("bilinear", blur=(0.5, 2.0), noise=(1.0, 10.0))
    with pytest.raises(ValueError, match=r"bad-x2: training spec: .*downscales by 4, not 2"):
        pack_tiny_model(tmp_path, "bad-x2", 2, "bicubic(4)", seed=2)
    with pytest.raises(ValueError, match="'auto'.*chosen per image"):
        pack_tiny_model(tmp_path, "auto", 2, "bicubic", seed=2)
    assert not list(tmp_path.iterdir())


def test_distance_is_zero_inside_the_training_damage_and_sums_its_terms():
    poster = choice.Damage("nearest", jpeg=(30, 60))
    photo = choice.Damage("bicubic")
    seen = choice.Seen(p_nearest=0.9, jpeg=45, jpeg_confidence=1.0)
    assert choice.distance(seen, poster) == pytest.approx(0.1)  # only 1 - P(nearest)
    # photo: P(nearest) + the JPEG strength (100 - 45) / 70 beyond none, weighed as more than trained on
    assert choice.distance(seen, photo) == pytest.approx(0.9 + 55 / 70 * choice.JPEG_OVER)
    noisy = choice.Seen(p_nearest=0.0, jpeg=None, jpeg_confidence=1.0, noise=5.0, noise_confidence=0.8,
                        blur=3.0, blur_confidence=0.5)
    assert choice.distance(noisy, photo) == pytest.approx(5 / 10 * 0.8 + 3 / 4 * 0.5)
    # no JPEG seen, the model trained with q 30-60: the weakest of its strengths, (100 - 60) / 70, less
    assert choice.distance(choice.Seen(1.0, None, 1.0), poster) == pytest.approx(40 / 70 * choice.JPEG_UNDER)
    assert choice.JPEG_OVER > choice.JPEG_UNDER


@pytest.mark.parametrize("spec, want", [("bicubic", "tiny-photo-x2"),
                                        ("nearest > jpeg(30,60)", "tiny-poster-x2")])
def test_known_damage_gets_the_model_trained_on_it(model_dirs, hr_images, spec, want):
    specialists, with_general = model_dirs
    for folder in (specialists, with_general):  # certain: a general model does not change it
        auto = choice.AutoUpscaler(2, models_dir=folder)
        for name, hr in hr_images.items():
            if spec == "bicubic" and name == "poster":
                continue  # a poster's sharp text reads as pixel dropping even when filtered
            c = auto.choose(damaged(hr, spec, name), name)
            assert (c.model, c.uncertain) == (want, False), c.line(name)
            assert c.confidence >= choice.CONFIDENT
            if want == "tiny-poster-x2":
                assert "pixel dropping p=0." in c.reason and "JPEG q=" in c.reason
                assert c.reason.endswith("nearest to 'nearest > jpeg(30,60)'")
            else:
                assert "filtered downscale" in c.reason and "no JPEG" in c.reason


def test_uncertain_damage_goes_to_the_general_model_or_says_so(model_dirs, hr_images):
    specialists, with_general = model_dirs
    lr = damaged(hr_images["coffee"], "bicubic > noise(5)", "coffee")  # noise: no specialist was trained on it
    c = choice.AutoUpscaler(2, models_dir=with_general).choose(lr, "coffee")
    assert c.model == "tiny-general-x2" and c.uncertain and c.confidence < choice.CONFIDENT
    assert c.reason.startswith("uncertain: filtered downscale") and "noise 5." in c.reason
    assert c.reason.endswith("the general model")
    c = choice.AutoUpscaler(2, models_dir=specialists).choose(lr, "coffee")
    assert c.model == "tiny-photo-x2" and c.uncertain
    assert c.reason.endswith("no general model at x2") and "nearest to 'bicubic' at confidence" in c.reason
    # an image that cannot be diagnosed: the general model, else the model of the papers' LR
    small = damaged(hr_images["coffee"], "bicubic", "coffee")[:20]
    c = choice.AutoUpscaler(2, models_dir=with_general).choose(small)
    assert (c.model, c.uncertain) == ("tiny-general-x2", True)
    assert c.reason == "not diagnosed: 128x20 is too small to diagnose (under 32 pixels a side); the general model"
    assert c.record()["diagnosis"] == {"not_diagnosed": "128x20 is too small to diagnose (under 32 pixels a side)"}
    c = choice.AutoUpscaler(2, models_dir=specialists).choose(small)
    assert c.model == "tiny-photo-x2" and c.reason.startswith("not diagnosed: 128x20 is too small")


@pytest.mark.parametrize("spec, want", [("bicubic", "tiny-photo-x2"), ("nearest > jpeg(30,60)", "tiny-poster-x2")])
def test_grayscale_images_are_diagnosed_from_their_one_channel(model_dirs, hr_images, spec, want):
    """A grayscale LR (R = G = B) gets the specialist of its damage, as its colour original
    does, and its line says the noise was not measured."""
    _, with_general = model_dirs
    for name in ("chelsea", "coffee"):
        gray_hr = np.repeat(np.round(luma(hr_images[name])).astype(np.uint8)[..., None], 3, axis=2)
        lr = damaged(gray_hr, spec, name)
        lr = np.repeat(lr[..., :1], 3, axis=2)  # one channel's damage (JPEG, per channel rounding)
        c = choice.AutoUpscaler(2, models_dir=with_general).choose(lr, name)
        assert (c.model, c.uncertain) == (want, False), c.reason
        assert "noise not measured (grayscale)" in c.reason


def test_the_only_model_at_a_scale_is_taken_and_said_so(model_dirs, hr_images):
    specialists, _ = model_dirs
    hr = hr_images["poster"][:189, :255]
    lr = degrade.parse("nearest > jpeg(30,60)", scale=3)(hr, degrade.image_rng("poster"))
    c = choice.AutoUpscaler(3, models_dir=specialists).choose(lr, "poster")
    assert c.model == "tiny-photo-x3" and c.uncertain
    assert "the only built-in model at x3, trained on 'bicubic'" in c.reason
    with pytest.raises(ValueError, match="no built-in model at x4 to choose from"):
        choice.AutoUpscaler(4, models_dir=specialists)
    with pytest.raises(ValueError, match=r"choose from tiny-photo-x2.*or auto"):
        pretrained.card("nope", specialists)


def test_files_are_diagnosed_once_and_models_loaded_once(model_dirs, hr_images, tmp_path):
    specialists, _ = model_dirs
    from edsr_jax.evaluation import diagnosis

    calls = []

    def counting(path, scale=None):
        calls.append(path)
        return diagnosis.diagnose_file(path, scale)

    lr = damaged(hr_images["poster"], "nearest", "poster")
    path = tmp_path / "poster.jpg"
    Image.fromarray(lr).save(path, quality=45)
    auto = choice.AutoUpscaler(2, models_dir=specialists, diagnose_file=counting)
    first = auto.choose(path)
    assert auto.choose(str(path)) is first and len(calls) == 1
    assert first.model == "tiny-poster-x2" and "JPEG q=45" in first.reason  # read from the file's tables
    sr, again = auto.upscale(path)
    assert again is first and len(calls) == 1
    assert auto.upscaler(first.model) is auto.upscaler(first.model)
    config, params = pretrained.load(first.model, specialists)
    assert np.array_equal(sr, infer.Upscaler(config, params)(read_rgb(path)))
    os.utime(path, ns=(0, 0))  # changed on disk: diagnosed again
    auto.choose(path)
    assert len(calls) == 2


def test_a_video_gets_one_model_from_a_few_frames(model_dirs, hr_images, tmp_path):
    specialists, _ = model_dirs
    lr = damaged(hr_images["poster"], "nearest > jpeg(30,60)", "poster")
    frames = [Image.fromarray(np.roll(lr, 3 * k, axis=1)) for k in range(60)]
    frames[0].save(tmp_path / "loop.gif", save_all=True, append_images=frames[1:], duration=40)
    picked = video.sample_frames(tmp_path / "loop.gif")
    assert len(picked) == video.DIAGNOSED_FRAMES and all(f.shape == lr.shape for f in picked)
    with Image.open(tmp_path / "loop.gif") as gif:  # spread over the first 48: frames 0, 24, 47
        gif.seek(24)
        assert np.array_equal(picked[1], np.asarray(gif.convert("RGB")))
    c = choice.AutoUpscaler(2, models_dir=specialists).choose_frames(picked, "loop.gif")
    assert c.model == "tiny-poster-x2" and len(c.record()["diagnosis"]["frames"]) == 3
    assert len(video.sample_frames(tmp_path / "loop.gif", count=5, span=3)) == 3  # a short span: each frame once


def test_the_public_api_chooses(hr_images, model_dirs, tmp_path):
    specialists, _ = model_dirs
    lr = damaged(hr_images["chelsea"], "bicubic", "chelsea")
    c = edsr_jax.choose_model(lr, 2, models_dir=specialists)
    assert isinstance(c, choice.Choice) and edsr_jax.AutoUpscaler is choice.AutoUpscaler
    assert c.model == "tiny-photo-x2" and c.line("chelsea.png").startswith("chelsea.png: tiny-photo-x2 (")


def _lr_files(folder, hr_images):
    folder.mkdir()
    # both read with confidence 0.8 or more (0.5 is the limit); the poster is drawn content, so the
    # shipped calibration has the last word there
    write_image(folder / "photo.png", damaged(hr_images["chelsea"][64:192, 64:192], "bicubic", "chelsea"))
    Image.fromarray(damaged(hr_images["poster"][:128, :128], "nearest", "poster")).save(folder / "poster.jpg",
                                                                                         quality=45)


def test_upscale_chooses_by_default_announces_and_records(hr_images, tmp_path, capsys, monkeypatch):
    _lr_files(tmp_path / "in", hr_images)
    monkeypatch.chdir(tmp_path)
    assert cli.run(upscale.main, ["in", "--json", "up.json"]) == 0
    err = capsys.readouterr().err
    assert ("note: no --checkpoint or --model: --model auto, a built-in model chosen per image from the "
            "damage diagnosed in it (x2: ") in err
    assert "photo.png: photo-x2 (filtered downscale p=" in err
    # drawn content: the shipped calibration decides (its drawn neighbours with pixels dropped favour poster-x2)
    assert "poster.jpg: poster-x2 (drawn content: pixel dropping p=" in err and "JPEG q=45, two-level tiles" in err
    assert "2 of 2 image(s) upscaled x2 by photo-x2 (1), poster-x2 (1) into upscaled" in err
    record = json.loads((tmp_path / "up.json").read_text())
    assert (record["model"], record["scale"]) == ("auto", 2)
    rows = {os.path.basename(r["input"]): r for r in record["inputs"]}
    assert rows["poster.jpg"]["model"] == rows["poster.jpg"]["choice"]["model"] == "poster-x2"
    assert rows["poster.jpg"]["choice"]["diagnosis"]["jpeg_quality"] == 45
    assert rows["photo.png"]["output"].endswith("photo.png") and rows["photo.png"]["model"] == "photo-x2"
    up = infer.Upscaler.from_pretrained("poster-x2")
    assert np.array_equal(read_rgb(tmp_path / "upscaled" / "poster.png"), up(read_rgb(tmp_path / "in" / "poster.jpg")))
    # --json is checked first: an existing one is refused before anything runs
    assert cli.run(upscale.main, ["in", "--json", "up.json", "--out", "o2"]) == 2
    assert "error: --json up.json: exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert cli.run(upscale.main, ["in", "--json", "no/up.json", "--out", "o2"]) == 2
    assert "error: --json no/up.json: folder no does not exist" in capsys.readouterr().err
    assert cli.run(upscale.main, ["in", "--json", "in/photo.png", "--out", "o2"]) == 2
    assert "error: --json in/photo.png" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    # named models keep their own behaviour: no choice, no announcement
    assert cli.run(upscale.main, ["in/photo.png", "--model", "photo-x2", "--out", "o3", "--json", "o3.json"]) == 0
    assert "--model auto" not in capsys.readouterr().err
    assert json.loads((tmp_path / "o3.json").read_text())["inputs"][0]["model"] == "photo-x2"
    assert cli.run(upscale.main, ["in/photo.png", "--model", "nope", "--out", "o4"]) == 2
    err = capsys.readouterr().err
    assert "error: --model nope: unknown built-in model 'nope'; choose from " in err
    assert "photo-x2, " in err and err.endswith(", or auto (chosen per image)\n")


def test_upscale_auto_gives_an_animation_one_model(hr_images, tmp_path, capsys):
    lr = damaged(hr_images["poster"][:128, :128], "nearest", "poster")
    frames = [Image.fromarray(np.roll(lr, 2 * k, axis=0)) for k in range(4)]
    frames[0].save(tmp_path / "loop.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert cli.run(upscale.main, [str(tmp_path / "loop.gif"), "--out", str(tmp_path / "up"),
                                  "--json", str(tmp_path / "up.json")]) == 0
    err = capsys.readouterr().err
    (row,) = json.loads((tmp_path / "up.json").read_text())["inputs"]
    model = row["choice"]["model"]
    assert row["model"] == model and set(blend.members(model)) <= set(pretrained.names())  # a model or a blend
    assert err.count(f"loop.gif: {model} (") == 1  # one choice for the clip
    assert len(row["choice"]["diagnosis"]["frames"]) == 3
    with Image.open(tmp_path / "up" / "loop.gif") as out:
        assert (out.n_frames, out.size) == (4, (128, 128))


def test_upscale_auto_diagnoses_a_video_once_from_its_first_frames(tmp_path, capsys):
    pytest.importorskip("av", reason="PyAV not installed (pip install 'edsr-jax[video]')")
    from test_video import make_clip

    clip = make_clip(tmp_path / "clip.mp4", n=10)
    assert len(video.sample_frames(clip)) == 3  # frames 0, 4 (or 5) and 9 of the ten
    assert cli.run(upscale.main, [str(clip), "--out", str(tmp_path / "up"), "--json", str(tmp_path / "up.json")]) == 0
    (row,) = json.loads((tmp_path / "up.json").read_text())["inputs"]
    assert len(row["choice"]["diagnosis"]["frames"]) == 3
    assert capsys.readouterr().err.count(f"clip.mp4: {row['model']} (") == 1
    assert (tmp_path / "up" / "clip.mp4").stat().st_size > 0


def test_evaluate_scores_auto_as_a_row_with_the_model_per_image(hr_images, tmp_path, capsys):
    (tmp_path / "set").mkdir()
    write_image(tmp_path / "set" / "poster0.png", hr_images["poster"])
    write_image(tmp_path / "set" / "poster1.png", np.ascontiguousarray(hr_images["poster"][::-1]))
    assert cli.run(evaluate.main, [str(tmp_path / "set"), "--bicubic", "--model", "poster-x2", "auto",
                                   "--spec", "nearest > jpeg(30,60)", "--json", str(tmp_path / "r.json")]) == 0
    assert "note: set x2 auto: poster-x2 for 2 image(s)" in capsys.readouterr().err
    results = {r["method"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert list(results) == ["bicubic", "poster-x2", "auto"]
    assert results["auto"]["models"] == {"poster-x2": 2}
    assert [r["model"] for r in results["auto"]["per_image"]] == ["poster-x2", "poster-x2"]
    # drawn content: the shipped calibration decides (poster-x2 best on most of its drawn, pixel-dropped neighbours)
    assert results["auto"]["per_image"][0]["choice"]["reason"].startswith("drawn content: pixel dropping p=")
    # the same model on the same LR: the same scores
    assert results["auto"]["psnr"] == results["poster-x2"]["psnr"]


BAD_INPUTS = (
    "`upscale` / `evaluate` `--model auto` at a scale with no built-in model that names its training damage",
    "`upscale --json FILE` that exists, is an input or output, or lies in a missing folder",
    "an unknown `--model NAME` in `upscale`, `evaluate`, `export`",
    "an input `--model auto` cannot diagnose (16-bit, under 32 pixels a side)",
)


def test_bad_inputs_are_documented():
    assert_documented_rows(BAD_INPUTS)
