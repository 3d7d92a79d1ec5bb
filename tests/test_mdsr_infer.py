"""MDSR inference and export (issue 19 item 3): one MDSR checkpoint serves every scale through
the Upscaler (buckets, masked tiles, ensemble), the upscale / evaluate / export CLIs, StableHLO
per scale and the official PyTorch layout out.

Tolerances: padding and tiling are exact by construction (every ``model.Conv`` input masked,
the 5x5 pre-processing convolutions included), so they are held to ``EXACT`` = 3e-4 on the
0..255 scale, about 40 float32 ulps at 128 (measured: 3e-5, float32 sums in another order);
too little context (the 5x5 convolutions counted as 3x3) errs by 1e-3 to 4e-3 on this tiny
random model. JAX against PyTorch and StableHLO against the Upscaler: 1e-4 of the output's
magnitude, as in test_export.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from edsr_jax import evaluate, export, upscale
from edsr_jax.training import checkpoint
from edsr_jax.training.restore import restore_for_inference
from edsr_jax.io import cli
from edsr_jax.inference import infer
from edsr_jax.nets import mdsr
from edsr_jax.inference import stablehlo_runner
from edsr_jax.nets.edsr import ModelConfig
from conftest import torch_or_skip

ROOT = Path(__file__).resolve().parents[1]
TINY = mdsr.MDSRConfig((2, 3, 4), num_blocks=2, num_features=8)
SCALES = (2, 3, 4)
EXACT = 3e-4


def init(config=TINY, seed=0):
    return config.build().init(jax.random.key(seed), jnp.zeros((1, 6, 6, 3)), 2)["params"]


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def reference(params, lr, scale):
    return np.asarray(infer.apply(params, lr[None].astype(np.float32), TINY, scale=scale))[0]


def torch_mdsr(seed=0):
    torch_or_skip()
    from torch_mdsr import MDSR, randomize

    return randomize(MDSR(TINY.num_blocks, TINY.num_features, TINY.scales), seed=seed).eval()


def run_torch(model, x, scale):
    import torch

    with torch.no_grad():
        y = model.set_scale(scale)(torch.from_numpy(x).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).numpy()


# --- Upscaler -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", SCALES)
def test_bucketed_and_tiled_equal_plain_apply_at_each_scale(scale):
    params = init(seed=scale)
    lr = image(45, 61, seed=scale)  # bucketed to 48 x 64; 16-pixel tiles: a ragged 3 x 4 grid
    whole = infer.Upscaler(TINY, params, tile=512, scale=scale)
    tiled = infer.Upscaler(TINY, params, tile=16, scale=scale)
    assert whole.scale == tiled.scale == scale and whole.name == f"mdsr_b2_f8_x{scale}"
    # head 1 + pre-processing 2 blocks x 2 convs x 2 (5x5) + 2 per block + body 1 + stages + tail 1
    stages = 2 if scale == 4 else 1
    assert tiled.overlap == mdsr.receptive_radius(TINY, scale) == 1 + 8 + 4 + 1 + stages + 1
    ref = reference(params, lr, scale)
    a, b = whole.predict(lr), tiled.predict(lr)
    assert a.shape == b.shape == (45 * scale, 61 * scale, 3)
    assert np.abs(a - ref).max() < EXACT
    assert np.abs(b - ref).max() < EXACT
    # the comparison means something: the output is far from flat
    assert np.abs(ref - ref.mean()).max() > 10


@pytest.mark.parametrize("scale", SCALES)
def test_tiles_need_the_5x5_context(scale):
    """Counting the 5x5 pre-processing convolutions as 3x3 (4 LR pixels less of context)
    would show seams: the tile test above has teeth."""
    params = init(seed=1)
    lr = image(48, 48, seed=2)
    up = infer.Upscaler(TINY, params, tile=16, scale=scale)
    up.overlap -= 4
    assert np.abs(up.predict(lr) - reference(params, lr, scale)).max() > 1e-3 > EXACT


def test_padding_outside_the_bounds_never_leaks_through_the_5x5_convolutions():
    """``apply_masked`` on an image surrounded by large values equals ``apply`` on the image:
    every convolution's input, the 5x5 ones included, is masked to the bounds."""
    params = init(seed=3)
    lr = image(13, 17, seed=3).astype(np.float32)
    x = np.full((1, 24, 32, 3), 200.0, np.float32)
    x[0, 5:18, 7:24] = lr
    for scale in SCALES:
        y = np.asarray(infer.apply_masked(params, x, np.array([[5, 18, 7, 24]], np.int32), TINY,
                                          scale=scale))[0]
        got = y[5 * scale:18 * scale, 7 * scale:24 * scale]
        assert np.abs(got - reference(params, lr, scale)).max() < EXACT
        unmasked = np.asarray(infer.apply(params, x, TINY, scale=scale))[0][5 * scale:18 * scale,
                                                                            7 * scale:24 * scale]
        assert np.abs(unmasked - got).max() > 1  # without the mask the frame does leak in


def test_ensemble_tiled_equals_whole_and_at_scale_shares_the_weights():
    params = init(seed=4)
    lr = image(37, 29, seed=4)
    up = infer.Upscaler(TINY, params, tile=512, ensemble=True, scale=2)
    for scale in (3, 4):
        other = up.at_scale(scale)
        assert other.params is up.params and other.scale == scale and other.ensemble
        tiled = infer.Upscaler(TINY, params, tile=16, ensemble=True, scale=scale)
        a, b = other.predict(lr), tiled.predict(lr)
        assert a.shape == (37 * scale, 29 * scale, 3)
        assert np.abs(a - b).max() < EXACT
        assert np.abs(a - reference(params, lr, scale)).max() > 1e-2  # the ensemble did something
    assert up.scale == 2  # at_scale left the original as it was


def test_scale_is_required_for_mdsr_and_refused_for_another_edsr_scale():
    params = init()
    with pytest.raises(ValueError, match="MDSR model serves scales 2 3 4: choose one with scale"):
        infer.Upscaler(TINY, params)
    with pytest.raises(ValueError, match="this MDSR model serves scales 2 3 4"):
        infer.Upscaler(mdsr.MDSRConfig((2, 3, 4), 2, 8), params, scale=5)
    with pytest.raises(ValueError, match="serves scales 2 4"):
        infer.Upscaler(mdsr.MDSRConfig((2, 4), 2, 8), params, scale=3)
    edsr = ModelConfig(2, 2, 8)
    edsr_params = edsr.build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    with pytest.raises(ValueError, match=r"scale 3: this EDSR model upscales x2 only"):
        infer.Upscaler(edsr, edsr_params, scale=3)
    assert infer.Upscaler(edsr, edsr_params, scale=2).scale == 2  # its own scale is harmless
    with pytest.raises(ValueError, match="choose one with scale"):
        infer.tile_for_budget(TINY, 64)
    # the tile rule follows the scale: x4 holds more values per LR pixel than x2
    small = infer.Upscaler(TINY, params, memory_budget_mb=4, scale=4)
    assert small.at_scale(2).tile > small.tile == infer.tile_for_budget(TINY, 4, scale=4)
    assert infer.model_name(TINY) == "mdsr_b2_f8"
    assert infer.model_name(mdsr.preset("mdsr_baseline"), 3) == "mdsr_baseline_x3"


def test_checkpoint_says_mdsr_and_edsr_config_is_unchanged(tmp_path):
    params = init(seed=6)
    step = checkpoint.save_params_checkpoint(tmp_path / "m", TINY, {"params": params})
    stored = json.loads((step / "config" / "metadata").read_text())
    assert stored["model"] == {"arch": "mdsr", "scales": [2, 3, 4], "num_blocks": 2, "num_features": 8}
    config, restored = restore_for_inference(tmp_path / "m")
    assert config == TINY
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    edsr = ModelConfig(3, 2, 8)
    edsr_params = edsr.build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    step = checkpoint.save_params_checkpoint(tmp_path / "e", edsr, edsr_params)
    stored = json.loads((step / "config" / "metadata").read_text())
    assert stored["model"] == edsr.to_dict() and "arch" not in stored["model"]
    assert restore_for_inference(tmp_path / "e")[0] == edsr


# --- the CLIs, from one imported MDSR checkpoint ----------------------------------------------------

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(torch model, official .pt, checkpoint folder written by ``export --from-torch``)."""
    torch = torch_or_skip()

    model = torch_mdsr(seed=7)
    root = tmp_path_factory.mktemp("mdsr")
    pt = root / "mdsr.pt"
    torch.save(model.state_dict(), pt)
    ckpt = root / "imported"
    assert cli.run(export.main, ["--from-torch", str(pt), "--out", str(ckpt)]) == 0
    return model, pt, ckpt


@pytest.mark.torch  # the imported fixture is made with PyTorch
def test_import_gives_an_mdsr_checkpoint_equal_to_torch_at_each_scale(imported):
    model, _, ckpt = imported
    config, params = restore_for_inference(ckpt)
    assert config == TINY
    lr = image(12, 15, seed=8)
    for scale in SCALES:
        up = infer.Upscaler.from_checkpoint(ckpt, scale=scale)
        assert up.step == 0
        ref = run_torch(model, lr[None].astype(np.float32), scale)[0]
        got = up.predict(lr)
        assert got.shape == (12 * scale, 15 * scale, 3)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.torch  # the imported fixture is made with PyTorch
def test_import_errors(imported, tmp_path, capsys):
    _, pt, ckpt = imported
    for extra, message in ((["--scale", "2"], "holds MDSR weights, which serve every scale"),
                           (["--preset", "edsr_baseline"], "choose from mdsr, mdsr_baseline"),
                           (["--preset", "mdsr_baseline"], "num_blocks: state_dict=2"),
                           (["--res-scale", "0.1"], "MDSR has no residual scaling")):
        assert cli.run(export.main, ["--from-torch", str(pt), "--out", str(tmp_path / "x")] + extra) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and message in err, (extra, err)
        assert not (tmp_path / "x").exists()
    # and an MDSR preset for EDSR weights
    import torch
    from torch_edsr import EDSR, randomize

    edsr_pt = tmp_path / "edsr.pt"
    torch.save(randomize(EDSR(2, 2, 8, 1.0)).state_dict(), edsr_pt)
    assert cli.run(export.main, ["--from-torch", str(edsr_pt), "--out", str(tmp_path / "x"),
                                 "--preset", "mdsr_baseline"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "holds EDSR weights; choose from edsr, edsr_baseline" in err


@pytest.mark.torch  # the imported fixture is made with PyTorch
def test_upscale_cli_at_each_scale(imported, tmp_path, capsys):
    _, _, ckpt = imported
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(image(13, 17, seed=9)).save(src / "a.png")
    for scale in SCALES:
        out = tmp_path / f"x{scale}"
        assert cli.run(upscale.main, [str(src), "--checkpoint", str(ckpt), "--scale", str(scale),
                                      "--out", str(out), "--tile", "8"]) == 0
        sr = np.asarray(Image.open(out / "a.png"))
        assert sr.shape == (13 * scale, 17 * scale, 3)
        want = infer.Upscaler.from_checkpoint(ckpt, scale=scale, tile=512)(image(13, 17, seed=9))
        assert np.abs(sr.astype(int) - want).max() <= 1  # tiled vs whole: at most a rounding step
    capsys.readouterr()
    assert cli.run(upscale.main, [str(src), "--checkpoint", str(ckpt), "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "serves scales 2 3 4: choose one with --scale" in err


@pytest.mark.torch  # the imported fixture is made with PyTorch
def test_evaluate_cli_scores_each_scale_from_one_checkpoint(imported, tmp_path, capsys):
    _, _, ckpt = imported
    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(image(24 + 12 * i, 36, seed=10 + i)).save(folder / f"{i}.png")
    out = tmp_path / "r.json"
    assert cli.run(evaluate.main, ["--checkpoint", str(ckpt), "--bicubic", "--scales", "2", "3", "4",
                                   "--json", str(out), str(folder)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["method"], r["scale"]) for r in results] == [
        (m, s) for s in SCALES for m in ("bicubic", "mdsr_b2_f8")]
    assert all(r["images"] == 2 and np.isfinite(r["psnr"]) for r in results)
    model = {r["scale"]: r["psnr"] for r in results if r["method"] == "mdsr_b2_f8"}
    assert len(set(model.values())) == 3  # three different scales really ran
    assert "gain over bicubic" in capsys.readouterr().out
    # default: every scale of the MDSR; a scale it does not serve is named
    assert cli.run(evaluate.main, ["--checkpoint", str(ckpt), "--json", str(tmp_path / "d.json"),
                                   str(folder)]) == 0
    assert [r["scale"] for r in json.loads((tmp_path / "d.json").read_text())["results"]] == [2, 3, 4]


@pytest.mark.torch  # the imported fixture is made with PyTorch
def test_stablehlo_export_per_scale_equals_the_upscaler(imported, tmp_path, capsys):
    _, _, ckpt = imported
    lr = image(11, 14, seed=12)
    for scale in SCALES:
        art = tmp_path / f"m_x{scale}.stablehlo"
        assert cli.run(export.main, ["--checkpoint", str(ckpt), "--out", str(art), "--scale", str(scale),
                                     "--platforms", "cpu"]) == 0
        assert f"mdsr_b2_f8_x{scale}, x{scale}" in capsys.readouterr().out
        header, _ = stablehlo_runner.unpack(art.read_bytes())
        assert header["scale"] == scale and header["name"] == f"mdsr_b2_f8_x{scale}"
        assert header["model"]["arch"] == "mdsr" and header["output"]["shape"][1] == f"{scale}*h"
        got = stablehlo_runner.load(art).predict(lr)
        want = infer.Upscaler.from_checkpoint(ckpt, scale=scale).predict(lr)
        assert got.shape == want.shape == (11 * scale, 14 * scale, 3)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # the runner's own CLI, in a fresh process, on the x3 artifact
    np.save(tmp_path / "lr.npy", lr)
    proc = subprocess.run([sys.executable, "-m", "edsr_jax.inference.stablehlo_runner", str(tmp_path / "m_x3.stablehlo"),
                           str(tmp_path / "lr.npy"), str(tmp_path / "sr.npy")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "sr.npy").shape == (33, 42, 3)
    # --scale is required for an MDSR's StableHLO export
    assert cli.run(export.main, ["--checkpoint", str(ckpt), "--out", str(tmp_path / "no.stablehlo")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "choose one with --scale" in err
    assert not (tmp_path / "no.stablehlo").exists()


@pytest.mark.torch  # the imported fixture is made with PyTorch
def test_torch_export_writes_the_official_layout(imported, tmp_path, capsys):
    import torch

    model, _, ckpt = imported
    out = tmp_path / "back.pt"
    assert cli.run(export.main, ["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "scales 2 3 4" in capsys.readouterr().out
    back = torch.load(out, weights_only=True)
    want = model.state_dict()
    assert sorted(back) == sorted(want)  # the official key names (load_state_dict ignores order)
    for k, v in want.items():
        assert torch.equal(back[k], v), k
    assert cli.run(export.main, ["--checkpoint", str(ckpt), "--out", str(tmp_path / "s.pt"),
                                 "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "holds every scale" in err


@pytest.mark.slow
def test_trainer_finetunes_an_edsr_from_an_mdsr_checkpoint(tmp_path):
    """An MDSR checkpoint as init_from of an EDSR x2 run: head, body, the x2 upsampler (as
    EDSR's upsample_0) and the tail are all taken (MDSR training itself: test_mdsr_train.py)."""
    from test_train import run_train

    checkpoint.save_params_checkpoint(tmp_path / "m", TINY, {"params": init()})
    r = run_train(tmp_path / "w", "--config.train.steps=1", f"--config.train.init_from={tmp_path / 'm'}",
                  timeout=300)
    assert r.returncode == 0, r.stderr
    assert "loaded 16 arrays; freshly initialised 0: none" in r.stderr, r.stderr
