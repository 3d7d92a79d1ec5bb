"""Tests for the Grain input pipeline (edsr_jax.data.sources) and the decode cache (edsr_jax.data.cache).

Images are tiny, generated in tmp_path; the cache lives in tmp_path too.
"""

from __future__ import annotations

import os
import shutil

import grain
import numpy as np
import pytest

from edsr_jax.data import blocks
from edsr_jax.data import cache as cache_lib
from edsr_jax.data import sources as data
from edsr_jax.io.images import write_image
from edsr_jax.degradation.imresize import imresize


def _noise(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(rng, h, w):
    """A smooth random image (bicubic-upscaled noise): realistic enough for resampling."""
    return imresize(_noise(rng, h // 4 + 2, w // 4 + 2), output_shape=(h, w))


def make_pairs(root, scale, lr_sizes, *, nearest=False, seed=0, name="bicubic"):
    """A DIV2K-layout folder; LR = imresize(HR, 1/s), or HR = nearest upscale of LR."""
    rng = np.random.default_rng(seed)
    for k, (h, w) in enumerate(lr_sizes):
        if nearest:
            lr = _noise(rng, h, w)
            hr = np.repeat(np.repeat(lr, scale, 0), scale, 1)
        else:
            hr = _smooth(rng, h * scale, w * scale)
            lr = imresize(hr, 1 / scale)
        write_image(root / "HR" / f"{k:04d}.png", hr)
        write_image(root / f"LR_{name}" / f"X{scale}" / f"{k:04d}x{scale}.png", lr)
    return root


def make_hr(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    for k, (h, w) in enumerate(sizes):
        write_image(folder / f"img{k:02d}.png", _smooth(rng, h, w))
    return folder


def id_pairs(root, n, p, scale=2):
    """``n`` constant-colour pairs of exactly one LR patch each: image k has value k."""
    for k in range(n):
        lr = np.full((p, p, 3), k, np.uint8)
        write_image(root / "HR" / f"{k:04d}.png", np.repeat(np.repeat(lr, scale, 0), scale, 1))
        write_image(root / "LR_bicubic" / f"X{scale}" / f"{k:04d}x{scale}.png", lr)
    return data.PairedFolderSource(root, scale, cache_dir=root / "cache", progress=False)


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def batches_equal(a, b):
    """Two lists of batches hold the same keys and the same arrays under each."""
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
               for x, y in zip(a, b, strict=True))


def train(src, **kw):
    kw = {"patch_size": 6, "batch_size": 4, "seed": 0, "process_index": 0, "process_count": 1} | kw
    return data.make_train_dataset(src, **kw)


# --------------------------------------------------------------------------- shapes and alignment

@pytest.mark.parametrize("scale", [2, 3, 4])
def test_paired_batches_shapes_and_alignment(tmp_path, scale):
    root = make_pairs(tmp_path / "ds", scale, [(20, 24), (22, 20), (21, 23)])
    src = data.PairedFolderSource(root, scale, cache_dir=tmp_path / "cache", progress=False)
    assert len(src) == 3 and src.scale == scale
    p, b = 10, 4
    for batch in take(train(src, patch_size=p, batch_size=b, augment=False), 3):
        assert batch["lr"].shape == (b, p, p, 3) and batch["lr"].dtype == np.uint8
        assert batch["hr"].shape == (b, p * scale, p * scale, 3) and batch["hr"].dtype == np.uint8
        # The LR patch is the bicubic downscale of the HR patch: imresize of the patch
        # alone agrees exactly wherever the 4*s-wide kernel stays inside the patch.
        for lr, hr in zip(batch["lr"], batch["hr"]):
            own = imresize(hr, 1 / scale)
            np.testing.assert_array_equal(own[3:-3, 3:-3], lr[3:-3, 3:-3])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_hr_only_bicubic_aligned(tmp_path, scale):
    folder = make_hr(tmp_path / "hr", [(24 * scale, 26 * scale + 1), (25 * scale + 2, 24 * scale)])
    src = data.HROnlySource(folder, scale, cache_dir=tmp_path / "cache", progress=False)
    assert len(src) == 2 and src.lr_sizes[0] == (24, 26)
    p = 10
    batches = take(train(src, patch_size=p, batch_size=4, augment=False), 3)
    for batch in batches:
        assert batch["lr"].shape == (4, p, p, 3) and batch["hr"].shape == (4, p * scale, p * scale, 3)
        for lr, hr in zip(batch["lr"], batch["hr"]):
            np.testing.assert_array_equal(imresize(hr, 1 / scale)[3:-3, 3:-3], lr[3:-3, 3:-3])
    # With the margin, the LR patch equals the same window of the whole image's
    # downscale exactly, borders included, when the window is >= 3 LR pixels inside
    # the image (the patch position is replayed from a generator in the same state).
    full = imresize(src.image(0), 1 / scale)
    inside = 0
    for k in range(30):
        lr, hr = src.patch(0, p, np.random.default_rng(k))
        replay = np.random.default_rng(k)
        y, x = (int(replay.integers(0, n - p + 1)) for n in src.lr_sizes[0])
        np.testing.assert_array_equal(hr, src.image(0)[y * scale:(y + p) * scale, x * scale:(x + p) * scale])
        if min(y, x, 24 - p - y, 26 - p - x) >= 3:
            np.testing.assert_array_equal(lr, full[y:y + p, x:x + p])
            inside += 1
    assert inside > 0


def test_symmetries_applied_identically(tmp_path):
    """HR is the nearest upscale of random LR, so HR == repeat(LR) must survive every
    flip/rotation; each LR patch must be one of the 8 symmetries of some LR crop, and
    all 8 must occur."""
    s, p = 2, 4
    root = make_pairs(tmp_path / "ds", s, [(9, 9)], nearest=True)
    src = data.PairedFolderSource(root, s, cache_dir=tmp_path / "cache", progress=False)
    lr_img, _ = src.image(0)
    crops = {(y, x): lr_img[y:y + p, x:x + p] for y in range(9 - p + 1) for x in range(9 - p + 1)}
    seen = set()
    for batch in take(train(src, patch_size=p, batch_size=8), 12):
        for lr, hr in zip(batch["lr"], batch["hr"]):
            np.testing.assert_array_equal(hr, np.repeat(np.repeat(lr, s, 0), s, 1))
            ks = {k for c in crops.values() for k in range(8) if np.array_equal(data.symmetry(c, k), lr)}
            assert len(ks) == 1
            seen |= ks
    assert seen == set(range(8))


@pytest.mark.parametrize("kind", ["paired", "hr_only"])
def test_decimated_pairs_stay_aligned_under_augmentation(tmp_path, kind):
    """``nearest`` keeps the top-left pixel of each block: a flip would pair LR pixel j with
    HR pixel s*j + s-1 instead of s*j. Augmented pairs must still satisfy LR == HR[::s, ::s]
    exactly, and both symmetries that keep the phase (identity, transpose) must occur."""
    s, p = 2, 6
    rng = np.random.default_rng(3)
    hr_img = rng.integers(0, 256, (20 * s, 22 * s, 3), dtype=np.uint8)
    if kind == "paired":
        write_image(tmp_path / "ds" / "HR" / "0000.png", hr_img)
        write_image(tmp_path / "ds" / "LR_poster" / "X2" / "0000x2.png", hr_img[::s, ::s])
        src = data.PairedFolderSource(tmp_path / "ds", s, "poster", cache_dir=tmp_path / "cache",
                                      progress=False, spec="nearest(2)")
    else:
        write_image(tmp_path / "hr" / "0000.png", hr_img)
        src = data.HROnlySource(tmp_path / "hr", s, spec="nearest", cache_dir=tmp_path / "cache",
                                progress=False)
    assert src.symmetries == (0, 5)
    transposed = plain = 0
    for batch in take(train(src, patch_size=p, batch_size=8), 8):
        for lr, hr in zip(batch["lr"], batch["hr"]):
            np.testing.assert_array_equal(lr, hr[::s, ::s])
            found = [k for k in (0, 5) if any(
                np.array_equal(data.symmetry(hr_img[y:y + p * s, x:x + p * s], k), hr)
                for y in range(0, 20 * s - p * s + 1, s) for x in range(0, 22 * s - p * s + 1, s))]
            assert found
            plain, transposed = plain + (0 in found), transposed + (5 in found)
    assert plain and transposed


def test_symmetry_group():
    img = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    outs = [data.symmetry(img, k) for k in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    np.testing.assert_array_equal(outs[1][:, :, 0], np.rot90(img[:, :, 0]))
    np.testing.assert_array_equal(outs[4][:, :, 0], img[:, ::-1, 0])


# --------------------------------------------------------------------------- order, seeds, shards

def test_epochs_cover_all_records_and_reshuffle(tmp_path):
    src = id_pairs(tmp_path, 8, 4)
    ds = train(src, patch_size=4, batch_size=8, augment=False)
    epochs = [b["lr"][:, 0, 0, 0].tolist() for b in take(ds, 3)]
    for e in epochs:
        assert sorted(e) == list(range(8))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_patches_per_image(tmp_path):
    src = id_pairs(tmp_path, 3, 4)
    ids = take(train(src, patch_size=4, batch_size=6, patches_per_image=2, augment=False), 1)[0]
    assert sorted(ids["lr"][:, 0, 0, 0].tolist()) == [0, 0, 1, 1, 2, 2]


def test_seed_determinism(tmp_path):
    root = make_pairs(tmp_path / "ds", 2, [(16, 16), (18, 17)])
    src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    a, b, c = (take(train(src, seed=seed), 3) for seed in (5, 5, 6))
    assert batches_equal(a, b)
    assert not any(np.array_equal(x["hr"], y["hr"]) for x, y in zip(a, c))


def test_process_shards_disjoint_and_cover_epoch(tmp_path):
    src = id_pairs(tmp_path, 8, 4)
    shards = [take(train(src, patch_size=4, batch_size=4, augment=False,
                         process_index=i, process_count=2), 2) for i in range(2)]
    ids = [[v for b in sh for v in b["lr"][:, 0, 0, 0].tolist()] for sh in shards]
    assert all(b["lr"].shape[0] == 2 for sh in shards for b in sh)  # per-process batch
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == list(range(8))
    # Process i takes elements i, i+2, ... of the single-process stream.
    whole = [v for b in take(train(src, patch_size=4, batch_size=4, augment=False), 2)
             for v in b["lr"][:, 0, 0, 0].tolist()]
    assert whole[0::2] == ids[0] and whole[1::2] == ids[1]
    with pytest.raises(ValueError, match="not divisible"):
        train(src, patch_size=4, batch_size=5, process_index=0, process_count=2)


@pytest.mark.parametrize("kind", ["paired", "hr_only"])
def test_worker_processes_give_the_same_batches(tmp_path, kind):
    if kind == "paired":
        root = make_pairs(tmp_path / "ds", 2, [(16, 16), (18, 17)])
        src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    else:  # a random chain: noise and JPEG quality come from the per-element generator
        src = data.HROnlySource(make_hr(tmp_path / "hr", [(40, 44)]), 2,
                                spec="bicubic(2) > noise(0,8) > jpeg(30,90)",
                                cache_dir=tmp_path / "cache", progress=False)
    ds = train(src, num_workers=2)
    it = iter(ds)
    got = [next(it) for _ in range(4)]
    it.close()
    assert batches_equal(got, take(train(src, num_workers=0), 4))


# --------------------------------------------------------------------------- checkpointing

def test_iterator_state_resumes_identically(tmp_path):
    root = make_pairs(tmp_path / "ds", 2, [(16, 16), (18, 17), (16, 20)])
    src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    ds = train(src, batch_size=2, patches_per_image=2)  # epoch = 3 batches
    it = iter(ds)
    for _ in range(4):  # mid-way through the second epoch
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(5)]
    it2 = iter(train(src, batch_size=2, patches_per_image=2))
    it2.set_state(state)
    assert batches_equal(expected, [next(it2) for _ in range(5)])
    grain.experimental.assert_equal_output_after_checkpoint(grain.experimental.LimitIterDataset(ds, 7))


@pytest.mark.parametrize("loader", ["per_patch", "hr_blocks"])
def test_iterator_orbax_checkpoint(tmp_path, loader):
    ocp = pytest.importorskip("orbax.checkpoint")
    make = {"per_patch": train, "hr_blocks": hrtrain}[loader]
    root = make_pairs(tmp_path / "ds", 2, [(16, 16), (18, 17)])
    src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    it = iter(make(src, batch_size=2))
    for _ in range(3):
        next(it)
    ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    ckpt.save(tmp_path / "ckpt" / "data_iter", args=grain.checkpoint.CheckpointSave(it))
    expected = [next(it) for _ in range(3)]
    it2 = iter(make(src, batch_size=2))
    ckpt.restore(tmp_path / "ckpt" / "data_iter", args=grain.checkpoint.CheckpointRestore(it2))
    assert batches_equal(expected, [next(it2) for _ in range(3)])
    if loader == "hr_blocks":
        assert expected[0]["index"][0] == 6  # batch 3 of 2 rows


# --------------------------------------------------------------------------- decode cache

def test_cache_decodes_once_and_recaches_changed_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    first = _noise(rng, 5, 7)
    write_image(path, first)
    cache = cache_lib.DecodeCache(tmp_path / "cache")
    entry = cache.ensure(path)
    arr = cache_lib.load(entry)
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    np.testing.assert_array_equal(arr, first)
    mtime = entry.stat().st_mtime_ns
    assert cache.ensure(path) == entry and entry.stat().st_mtime_ns == mtime  # not re-decoded
    second = _noise(rng, 5, 7)
    write_image(path, second, overwrite=True)
    entry2 = cache.ensure(path)
    assert entry2 != entry
    np.testing.assert_array_equal(cache_lib.load(entry2), second)
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(cache_lib.ENV_VAR, str(tmp_path / "c"))
    assert cache_lib.DecodeCache().root == tmp_path / "c"
    monkeypatch.delenv(cache_lib.ENV_VAR)
    assert cache_lib.default_cache_dir().parts[-3:] == (".cache", "edsr_jax", "decoded")


def test_training_reads_only_the_cache(tmp_path):
    root = make_pairs(tmp_path / "ds", 2, [(16, 16)])
    src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    shutil.rmtree(root)  # no image file is opened once the source exists
    assert take(train(src), 2)[1]["hr"].shape == (4, 12, 12, 3)


# --------------------------------------------------------------------------- bad input

def test_missing_lr_file(tmp_path):
    root = make_pairs(tmp_path / "ds", 2, [(8, 8), (8, 8)])
    os.unlink(root / "LR_bicubic" / "X2" / "0001x2.png")
    with pytest.raises(data.DatasetError, match=r"0001x2\.png: missing LR image"):
        data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)


def test_size_mismatch_names_both_files(tmp_path):
    root = make_pairs(tmp_path / "ds", 2, [(8, 8)])
    write_image(root / "LR_bicubic" / "X2" / "0000x2.png", np.zeros((8, 7, 3), np.uint8), overwrite=True)
    with pytest.raises(data.DatasetError, match=r"0000\.png is 16x16 but its LR image .*0000x2\.png is 7x8"):
        data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)


def test_hr_larger_by_less_than_scale_is_cropped(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(1)
    write_image(root / "HR" / "0000.png", _noise(rng, 26, 25))
    write_image(root / "LR_bicubic" / "X3" / "0000x3.png", _noise(rng, 8, 8))
    src = data.PairedFolderSource(root, 3, cache_dir=tmp_path / "cache", progress=False)
    lr, hr = src.image(0)
    assert lr.shape == (8, 8, 3) and hr.shape == (24, 24, 3)


def test_missing_folders(tmp_path):
    with pytest.raises(data.DatasetError, match="nowhere.*no such folder"):
        data.PairedFolderSource(tmp_path / "nowhere", 2, cache_dir=tmp_path / "c")
    make_pairs(tmp_path / "ds", 2, [(8, 8)])
    with pytest.raises(data.DatasetError, match=r"LR_bicubic/X3: no such folder"):
        data.PairedFolderSource(tmp_path / "ds", 3, cache_dir=tmp_path / "c")
    with pytest.raises(data.DatasetError, match="nowhere: no such folder"):
        data.HROnlySource(tmp_path / "nowhere", 2, cache_dir=tmp_path / "c")
    with pytest.raises(data.DatasetError, match=r"gone\.png: no such file"):
        data.HROnlySource([tmp_path / "gone.png"], 2, cache_dir=tmp_path / "c")


def test_small_and_unreadable_images(tmp_path):
    folder = make_hr(tmp_path / "hr", [(20, 20), (40, 40)])
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"broken\.png"):
        src = data.HROnlySource(folder, 2, cache_dir=tmp_path / "cache", progress=False)
    assert src.names == ["img00", "img01"]
    with pytest.warns(UserWarning, match=r"smaller than the HR patch 24x24: img00 \(20x20\)"):
        ds = train(src, patch_size=12)
    assert take(ds, 1)[0]["hr"].shape == (4, 24, 24, 3)
    with pytest.raises(data.DatasetError, match=r"all 2 images are smaller than the HR patch 48x48"):
        train(src, patch_size=24)


def test_spec_scale_must_match(tmp_path):
    folder = make_hr(tmp_path / "hr", [(16, 16)])
    with pytest.raises(ValueError, match=r"bicubic\(4\)' downscales by 4, not 2"):
        data.HROnlySource(folder, 2, spec="bicubic(4)", cache_dir=tmp_path / "cache")
    src = data.HROnlySource(folder, 2, spec="blur(1) > bicubic(S)", cache_dir=tmp_path / "cache")
    assert src.pipeline.scale == 2


@pytest.mark.parametrize("spec", ["blur(1.0) > bicubic(2)", "bicubic(2) > blur(0.8)"])
def test_degraded_crop_matches_whole_image(tmp_path, spec):
    """For a deterministic chain without jpeg the margined crop's LR patch equals the same
    window of the degraded whole image bit for bit (away from image edges)."""
    folder = make_hr(tmp_path / "hr", [(160, 192)])
    src = data.HROnlySource(folder, 2, spec=spec, cache_dir=tmp_path / "cache", progress=False)
    full = src.pipeline(np.ascontiguousarray(src.image(0)), np.random.default_rng(0))
    p, inside = 12, 0
    for k in range(300):
        if inside == 4:
            break
        lr, _ = src.patch(0, p, np.random.default_rng(k))
        replay = np.random.default_rng(k)
        y, x = (int(replay.integers(0, n - p + 1)) for n in src.lr_sizes[0])
        if min(y, x, 80 - p - y, 96 - p - x) * 2 >= src.margin:
            np.testing.assert_array_equal(lr, full[y:y + p, x:x + p])
            inside += 1
    assert inside == 4


# --------------------------------------------------------------------------- block sampling (edsr_jax.data.blocks)

BLOCK_DEFAULTS = {"patch_size": 6, "batch_size": 4, "seed": 0, "process_index": 0, "process_count": 1,
                  "block": 2}


def btrain(src, **kw):
    """make_block_dataset (block 2 unless given)."""
    return blocks.make_block_dataset(src, **(BLOCK_DEFAULTS | kw))


def hrtrain(src, **kw):
    return blocks.make_hr_dataset(src, **(BLOCK_DEFAULTS | kw))


def stream_of(src, **kw):
    kw = {"patch_size": 6, "block": 2, "patches_per_image": 1, "augment": True, "seed": 0,
          "hr_only": False} | kw
    return blocks.PatchStream(src, data.usable_images(src, kw["patch_size"]), **kw)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_block_pairs_shapes_and_alignment(tmp_path, scale):
    root = make_pairs(tmp_path / "ds", scale, [(20, 24), (22, 20), (21, 23)])
    src = data.PairedFolderSource(root, scale, cache_dir=tmp_path / "cache", progress=False)
    p, b = 10, 6
    for batch in take(btrain(src, patch_size=p, batch_size=b, block=3, augment=False), 3):
        assert set(batch) == {"lr", "hr"}
        assert batch["lr"].shape == (b, p, p, 3) and batch["lr"].dtype == np.uint8
        assert batch["hr"].shape == (b, p * scale, p * scale, 3) and batch["hr"].dtype == np.uint8
        for lr, hr in zip(batch["lr"], batch["hr"]):  # as test_paired_batches_shapes_and_alignment
            np.testing.assert_array_equal(imresize(hr, 1 / scale)[3:-3, 3:-3], lr[3:-3, 3:-3])


def test_block_hr_only_host_degradation_matches_whole_image(tmp_path):
    """Block mode on an HROnlySource degrades each margined crop as ``patch`` does: for a
    deterministic chain the LR equals the same window of the degraded whole image (the crop
    corner replayed from the stream's draws), and the HR is that window of the image."""
    folder = make_hr(tmp_path / "hr", [(160, 192)])
    src = data.HROnlySource(folder, 2, spec="blur(1.0) > bicubic(2)", cache_dir=tmp_path / "cache",
                            progress=False)
    full = src.pipeline(np.ascontiguousarray(src.image(0)), np.random.default_rng(0))
    p = 12
    stream = stream_of(src, patch_size=p, augment=False)
    batch = stream.patches(np.arange(40))
    ys, xs, ks = stream.draws(np.arange(40), np.zeros(40, np.int64))
    assert not ks.any()
    for lr, hr, y, x in zip(batch["lr"], batch["hr"], ys, xs):
        np.testing.assert_array_equal(hr, src.image(0)[2 * y:2 * (y + p), 2 * x:2 * (x + p)])
        np.testing.assert_array_equal(lr, full[y:y + p, x:x + p])


def test_block_symmetries_applied_identically(tmp_path):
    """As test_symmetries_applied_identically, in block mode: pairs stay pairs under all 8."""
    s, p = 2, 4
    root = make_pairs(tmp_path / "ds", s, [(9, 9)], nearest=True)
    src = data.PairedFolderSource(root, s, cache_dir=tmp_path / "cache", progress=False)
    lr_img, _ = src.image(0)
    crops = [lr_img[y:y + p, x:x + p] for y in range(9 - p + 1) for x in range(9 - p + 1)]
    seen = set()
    for batch in take(btrain(src, patch_size=p, batch_size=8, block=4), 12):
        for lr, hr in zip(batch["lr"], batch["hr"]):
            np.testing.assert_array_equal(hr, np.repeat(np.repeat(lr, s, 0), s, 1))
            ks = {k for c in crops for k in range(8) if np.array_equal(data.symmetry(c, k), lr)}
            assert len(ks) == 1
            seen |= ks
    assert seen == set(range(8))


@pytest.mark.parametrize("kind", ["paired", "hr_only"])
def test_block_decimated_pairs_stay_aligned(tmp_path, kind):
    """As test_decimated_pairs_stay_aligned_under_augmentation, in block mode: only the
    identity and the transpose, and LR == HR[::s, ::s] for every pair."""
    s, p = 2, 6
    rng = np.random.default_rng(3)
    hr_img = rng.integers(0, 256, (20 * s, 22 * s, 3), dtype=np.uint8)
    if kind == "paired":
        write_image(tmp_path / "ds" / "HR" / "0000.png", hr_img)
        write_image(tmp_path / "ds" / "LR_poster" / "X2" / "0000x2.png", hr_img[::s, ::s])
        src = data.PairedFolderSource(tmp_path / "ds", s, "poster", cache_dir=tmp_path / "cache",
                                      progress=False, spec="nearest(2)")
    else:
        write_image(tmp_path / "hr" / "0000.png", hr_img)
        src = data.HROnlySource(tmp_path / "hr", s, spec="nearest", cache_dir=tmp_path / "cache",
                                progress=False)
    transposed = plain = 0
    for batch in take(btrain(src, patch_size=p, batch_size=8, block=4), 8):
        for lr, hr in zip(batch["lr"], batch["hr"]):
            np.testing.assert_array_equal(lr, hr[::s, ::s])
            found = [k for k in (0, 5) if any(
                np.array_equal(data.symmetry(hr_img[y:y + p * s, x:x + p * s], k), hr)
                for y in range(0, 20 * s - p * s + 1, s) for x in range(0, 22 * s - p * s + 1, s))]
            assert found
            plain, transposed = plain + (0 in found), transposed + (5 in found)
    assert plain and transposed


def test_hr_crops_any_position_all_symmetries_and_indices(tmp_path):
    """make_hr_dataset: every row is symmetry k of the HR crop at some pixel (odd offsets
    included, not only the LR grid), all 8 symmetries occur even for a nearest source (the LR
    is made after the flip), and ``index`` numbers the rows of the global stream."""
    s, p = 2, 3
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (9 * s, 10 * s, 3), dtype=np.uint8)
    write_image(tmp_path / "hr" / "0000.png", img)
    src = data.HROnlySource(tmp_path / "hr", s, spec="nearest", cache_dir=tmp_path / "cache",
                            progress=False)
    P = p * s
    crops = {(y, x): img[y:y + P, x:x + P] for y in range(9 * s - P + 1) for x in range(10 * s - P + 1)}
    seen_k, odd = set(), False
    for t, batch in enumerate(take(hrtrain(src, patch_size=p, batch_size=8, block=4), 12)):
        assert set(batch) == {"hr", "index"}
        assert batch["hr"].shape == (8, P, P, 3) and batch["hr"].dtype == np.uint8
        assert batch["index"].dtype == np.int64
        np.testing.assert_array_equal(batch["index"], t * 8 + np.arange(8))
        for hr in batch["hr"]:
            where = [(yx, k) for yx, c in crops.items() for k in range(8)
                     if np.array_equal(data.symmetry(c, k), hr)]
            assert where
            seen_k |= {k for _, k in where}
            odd |= any(y % s or x % s for (y, x), _ in where)
    assert seen_k == set(range(8)) and odd


def test_block_epochs_cover_images_and_reshuffle(tmp_path):
    """An epoch is one block per image (patches_per_image <= block): with 8 one-patch images,
    block 2 and batch 16 each batch is exactly one epoch, each image twice, in a new order."""
    src = id_pairs(tmp_path, 8, 4)
    epochs = [b["lr"][:, 0, 0, 0].tolist() for b in take(btrain(src, patch_size=4, batch_size=16), 3)]
    for e in epochs:
        assert sorted(e) == sorted(list(range(8)) * 2)
        assert all(e[2 * j] == e[2 * j + 1] for j in range(8))  # a block is one image
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    # patches_per_image 4 at block 2: two blocks of every image per epoch (8 patches x 8 images).
    ids = take(btrain(src, patch_size=4, batch_size=32, patches_per_image=4), 2)
    for b in ids:
        assert sorted(b["lr"][:, 0, 0, 0].tolist()) == sorted(list(range(8)) * 4)


@pytest.mark.parametrize("block,batch,procs", [(2, 8, 2), (3, 8, 2), (5, 12, 4), (4, 4, 4)])
def test_block_global_batch_is_the_same_for_any_process_count(tmp_path, block, batch, procs):
    """Process i's local batch t is rows i*L ... (i+1)*L-1 of the single-process batch t,
    including blocks split between processes (block 3 or 5 does not divide L)."""
    root = make_pairs(tmp_path / "ds", 2, [(16, 16), (18, 17), (16, 20)])
    src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    whole = take(btrain(src, batch_size=batch, block=block), 3)
    shards = [take(btrain(src, batch_size=batch, block=block, process_index=i, process_count=procs), 3)
              for i in range(procs)]
    for t in range(3):
        for key in ("lr", "hr"):
            np.testing.assert_array_equal(np.concatenate([sh[t][key] for sh in shards]), whole[t][key])
    hr_whole = take(hrtrain(src, batch_size=batch, block=block), 2)
    hr_shards = [take(hrtrain(src, batch_size=batch, block=block, process_index=i, process_count=procs), 2)
                 for i in range(procs)]
    for t in range(2):
        for key in ("hr", "index"):
            np.testing.assert_array_equal(np.concatenate([sh[t][key] for sh in hr_shards]), hr_whole[t][key])


def test_block_patch_depends_only_on_its_index(tmp_path):
    """The rows for indices g are the same whichever batch asks for them (blocks cut anywhere)."""
    folder = make_hr(tmp_path / "hr", [(40, 44), (36, 50)])
    src = data.HROnlySource(folder, 2, spec="bicubic(2) > noise(0,8)", cache_dir=tmp_path / "cache",
                            progress=False)
    for hr_only in (False, True):
        stream = stream_of(src, block=3, hr_only=hr_only)
        whole = stream.patches(np.arange(30))
        for lo, hi in [(0, 1), (4, 11), (13, 30)]:
            part = stream.patches(np.arange(lo, hi))
            for key in whole:
                np.testing.assert_array_equal(part[key], whole[key][lo:hi])
        other = stream_of(src, block=3, hr_only=hr_only, seed=1).patches(np.arange(30))
        assert not np.array_equal(other["hr"], whole["hr"])


@pytest.mark.parametrize("kind", ["paired", "hr_degraded", "hr_crops"])
def test_block_worker_processes_give_the_same_batches(tmp_path, kind):
    if kind == "paired":
        root = make_pairs(tmp_path / "ds", 2, [(16, 16), (18, 17)])
        src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    else:  # a random chain: noise and JPEG quality from the per-patch generator
        src = data.HROnlySource(make_hr(tmp_path / "hr", [(40, 44)]), 2,
                                spec="bicubic(2) > noise(0,8) > jpeg(30,90)",
                                cache_dir=tmp_path / "cache", progress=False)
    make = hrtrain if kind == "hr_crops" else btrain
    it = iter(make(src, num_workers=2))
    got = [next(it) for _ in range(4)]
    it.close()
    want = take(make(src, num_workers=0), 4)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("hr_only", [False, True])
def test_block_iterator_state_resumes_identically(tmp_path, hr_only):
    root = make_pairs(tmp_path / "ds", 2, [(16, 16), (18, 17), (16, 20)])
    src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    make = hrtrain if hr_only else btrain
    ds = make(src, batch_size=4, block=3, patches_per_image=2)
    it = iter(ds)
    for _ in range(4):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(5)]
    it2 = iter(make(src, batch_size=4, block=3, patches_per_image=2))
    it2.set_state(state)
    for a, b in zip(expected, [next(it2) for _ in range(5)], strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    grain.experimental.assert_equal_output_after_checkpoint(grain.experimental.LimitIterDataset(ds, 7))


def test_block_bad_arguments(tmp_path):
    src = id_pairs(tmp_path, 2, 4)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"block must be a positive integer"):
            btrain(src, patch_size=4, block=bad)
    with pytest.raises(ValueError, match="not divisible"):
        hrtrain(src, patch_size=4, batch_size=5, process_index=0, process_count=2)
    with pytest.raises(data.DatasetError, match="smaller than the HR patch"):
        hrtrain(src, patch_size=5)


def test_config_degrade_on_and_loader_fields():
    """config.data.degrade_on (where the training LR is made) and data.loader default to "auto"
    and name the field and the choices when wrong; the device makes LR from HR images only,
    with the block loader."""
    from edsr_jax.training import config as config_lib

    c = config_lib.base_config()
    assert c.data.degrade_on == "auto" and c.data.loader == "auto" and c.data.block == 8
    config_lib.validate(c)
    c.data.degrade_on = "device"
    config_lib.validate(c)
    c.data.degrade_on = "gpu"
    with pytest.raises(ValueError, match=r"data\.degrade_on.*\('auto', 'host', 'device'\)"):
        config_lib.validate(c)
    c.data.degrade_on, c.data.loader = "device", "patch"
    with pytest.raises(ValueError, match=r"data\.degrade_on = 'device'.*needs the block loader"):
        config_lib.validate(c)
    c.data.loader, c.data.source = "block", "paired"
    with pytest.raises(ValueError, match=r"data\.degrade_on = 'device'.*prepared pairs"):
        config_lib.validate(c)
    c.data.degrade_on, c.data.loader = "host", "blocks"
    with pytest.raises(ValueError, match=r"data\.loader = 'blocks'.*\('auto', 'block', 'patch'\)"):
        config_lib.validate(c)
    c.data.loader, c.data.block = "block", 0
    with pytest.raises(ValueError, match=r"data\.block = 0.*integer in \[1, 4096\]"):
        config_lib.validate(c)


def test_index_words():
    idx = np.array([0, 5, 2**32 - 1, 2**32, 3 * 2**32 + 7, 2**61 + 1], dtype=np.int64)
    w = blocks.index_words(idx)
    assert w.dtype == np.uint32 and w.shape == (6, 2)
    np.testing.assert_array_equal(w[:, 0].astype(np.int64) * 2**32 + w[:, 1], idx)
    assert w[3].tolist() == [1, 0] and w[4].tolist() == [3, 7]
    with pytest.raises(ValueError, match="patch indices must be >= 0, got -1"):
        blocks.index_words(np.array([3, -1]))


@pytest.mark.parametrize("hr_only", [False, True])
def test_block_symmetries_on_the_device_give_the_same_patches(tmp_path, hr_only):
    """augment="device": crops as cut plus each row's symmetry; applying it with
    device_symmetry.apply_symmetries gives the host-augmented batch exactly."""
    from edsr_jax.data import device_symmetry

    root = make_pairs(tmp_path / "ds", 2, [(16, 16), (18, 17)])
    src = data.PairedFolderSource(root, 2, cache_dir=tmp_path / "cache", progress=False)
    make = hrtrain if hr_only else btrain
    host = take(make(src, batch_size=8, block=3), 3)
    dev = take(make(src, batch_size=8, block=3, augment="device"), 3)
    turned = 0
    for h, d in zip(host, dev):
        assert d["symmetry"].dtype == np.int32 and d["symmetry"].shape == (8,)
        turned += int((d["symmetry"] != 0).sum())
        for key in ("hr",) if hr_only else ("lr", "hr"):
            np.testing.assert_array_equal(np.asarray(device_symmetry.apply_symmetries(d[key], d["symmetry"])),
                                          h[key])
    assert turned > 0
    with pytest.raises(ValueError, match=r"augment must be one of \(True, False, 'host', 'device'\), got 'gpu'"):
        make(src, augment="gpu")


def test_loader_benchmark_json_contract(tmp_path, capsys):
    """benchmarks/loader.py --quick --json FILE writes rows other tools read: spec, where,
    workers, patches_per_s_per_core (here the cached pairs only, without the device rows)."""
    import importlib.util
    import json

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("loader_bench", ROOT / "benchmarks" / "loader.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    make_hr(tmp_path / "hr", [(120, 140), (130, 128)])
    out = tmp_path / "rows.json"
    cache_before = os.environ.get(cache_lib.ENV_VAR)
    assert bench.main(["--quick", "--data", str(tmp_path / "hr"), "--only", "pairs", "--no-device",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {(r["spec"], r["where"], r["loader"]) for r in rows} == {
        ("cached pairs", "host", "per-patch"), ("cached pairs", "host", "block"),
        ("cached pairs", "host", "block, flips on device")}
    for r in rows:
        assert r["workers"] == 0 and r["patches_per_s_per_core"] > 0
    assert "| host | cached pairs | block 8 | 0 |" in capsys.readouterr().out
    assert os.environ.get(cache_lib.ENV_VAR) == cache_before  # the benchmark's temp cache is not left set
