"""How a training run starts and ends, as a new user meets it: ``train --help`` documents every
config field, ``--print-config`` prints the resolved config, a finished run ends with its summary
(best PSNR against bicubic, checkpoints, wall time, next commands), re-running it says "already
finished", no empty ``train.lock`` is left, and a run on damaged LR validates on that damage."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from edsr_jax import prepare, train
from edsr_jax.io import cli
from edsr_jax.training import config as config_lib
from edsr_jax.training import config_help, summary
from edsr_jax.training.datasets import resolve_val_spec, training_damage, validation_set

TINY = str(ROOT / "tests" / "configs" / "tiny.py")
POSTER = "nearest > jpeg(30,60)"


def picture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(x / 5.0)[..., None] * np.cos(y / 4.0)[..., None]
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def poster_data(tmp_path_factory):
    """``(prepared folder made with POSTER, its HR folder)``: three 48x48 images."""
    root = tmp_path_factory.mktemp("poster")
    hr = root / "hr"
    hr.mkdir()
    for i in range(3):
        Image.fromarray(picture(48, 48, seed=i)).save(hr / f"p{i}.png")
    out = root / "data"
    assert cli.run(prepare.main, [str(hr), "--out", str(out), "--scales", "2", "--spec", POSTER,
                                  "--workers", "1", "--no-progress"]) == 0
    return out, hr


def test_every_config_field_has_a_help_line_from_base_configs_comments():
    """The help of a field is its comment in base_config (the one description): a field added
    without one fails here."""
    table = config_help.field_table()
    fields = list(config_lib.flatten(config_lib.base_config().to_dict()))
    assert sorted(f for f, _, _ in table) == sorted(fields)
    missing = [f for f, _, text in table if not text.strip()]
    assert not missing, f"fields without a comment in base_config: {missing}"
    helps = dict((f, t) for f, _, t in table)
    assert helps["optim.lr"] == "Adam learning rate (the peak of the cosine schedule)"
    # a block comment above the field gives its first sentence, not the details after it
    assert helps["train.new_protocol"].startswith("True: resuming with another validation protocol")
    assert "metrics.jsonl" not in helps["train.new_protocol"]
    assert config_help.summary("MDSR only: e.g. (2, 3, 4). More detail.") == "MDSR only: e.g. (2, 3, 4)"


def test_train_help_lists_every_field_with_default_and_the_decode_cache(capsys):
    assert cli.run(train.main, ["--help"]) == 0
    out = capsys.readouterr().out
    for field, default, text in config_help.field_table():
        line = next((ln for ln in out.splitlines() if ln.split()[:1] == [field]), None)
        assert line is not None, field
        assert config_help._shown(default) in line and text in line, line
    assert "--print-config" in out
    squeezed = " ".join(out.split())
    assert "~/.cache/edsr_jax/decoded" in squeezed and "$EDSR_JAX_CACHE" in squeezed
    assert "delete the folder to clear it" in squeezed


def test_print_config_prints_the_resolved_config_and_writes_nothing(poster_data, tmp_path, capsys,
                                                                     monkeypatch):
    data, _ = poster_data
    monkeypatch.chdir(tmp_path)
    argv = ["--config", TINY, "--print-config", "--config.optim.lr=0.002",
            "--config.data.source=paired", f"--config.data.train={data}"]
    assert cli.run(train.main, argv) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["optim"]["lr"] == 0.002 and printed["name"] == "tiny"
    assert printed["data"]["lr_name"] == "nearest_jpeg"  # resolved from the manifest
    assert printed["data"]["val_spec"] == POSTER  # the training damage, announced
    assert "data.val_spec='nearest > jpeg(30,60)', the training damage" in err
    assert list(tmp_path.iterdir()) == []
    assert cli.run(train.main, ["--config", TINY, "--print-config", "--config.optim.lr=-1"]) == 2
    assert "error: config.optim.lr = -1.0: must be > 0" in capsys.readouterr().err
    assert cli.run(train.main, ["--config", TINY]) == 2  # no --workdir, no --print-config
    assert "required: --workdir" in capsys.readouterr().err


@pytest.mark.slow
def test_a_finished_run_ends_with_a_summary_and_says_so_when_run_again(tmp_path, capsys):
    workdir = tmp_path / "runs" / "tiny"
    argv = ["--config", TINY, "--workdir", str(workdir)]
    assert cli.run(train.main, argv) == 0
    err = capsys.readouterr().err
    record = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()][-1]
    assert re.search(r"finished: step 6 of 6 in \d+ (min \d+ )?s", err), err[-3000:]
    assert (f"best: step 6, PSNR {record['psnr']:.2f} dB against bicubic {record['bicubic_psnr']:.2f} "
            f"({record['psnr'] - record['bicubic_psnr']:+.2f} dB)") in err
    assert f"checkpoints: {workdir / 'checkpoints'} (steps 3, 6); evaluate, upscale and export read step 6" in err
    w = shlex.quote(str(workdir))
    for command in (f"-m edsr_jax.evaluate --checkpoint {w} --bicubic samples/val",
                    f"-m edsr_jax.upscale YOUR_IMAGES --checkpoint {w} --out upscaled/tiny",
                    f"-m edsr_jax.export --checkpoint {w} --out {shlex.quote(str(workdir) + '.shlo')}"):
        assert command in err, command
    assert not (workdir / "train.lock").exists()  # a clean exit leaves no lock file

    assert cli.run(train.main, argv) == 0
    again = capsys.readouterr().err
    assert "already finished at step 6 (train.steps=6)" in again
    assert "best: step 6" in again and "-m edsr_jax.export" in again
    assert "6/6" not in again and "step/s" not in again  # no progress bar for nothing to do
    assert not (workdir / "train.lock").exists()
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1  # nothing trained again


def test_next_commands_name_the_scale_of_an_mdsr_and_the_run_s_damage():
    c = config_lib.mdsr_paper_config("mdsr_baseline")
    c.data.val, c.data.val_spec = "data/Set5", POSTER
    lines = summary.next_commands("runs/m d", c, python=".venv/bin/python")
    assert lines[0] == (".venv/bin/python -m edsr_jax.evaluate --checkpoint 'runs/m d' --bicubic "
                        "--spec 'nearest > jpeg(30,60)' data/Set5")
    assert "--checkpoint 'runs/m d' --scale 4 --out 'upscaled/m d'" in lines[1]
    assert lines[2].endswith("--scale 4 --out 'runs/m d_x4.shlo'")


# ------------------------------------------------------------- validation on the training damage

def _paired(data, **fields):
    c = config_lib.base_config()
    c.data.source, c.data.train, c.data.val_max_images = "paired", str(data), 2
    for k, v in fields.items():
        setattr(c.data, k, v)
    return c


def test_a_damaged_training_folder_is_validated_on_its_damage_by_default(poster_data):
    data, hr = poster_data
    said = []
    c = _paired(data, val=str(hr))
    evaluator = validation_set(c, report=said.append)
    assert c.data.val_spec == POSTER  # stored with the run: a resume compares it
    assert said == [f"validation: data.val_spec={POSTER!r}, the training damage (the manifest of {data} "
                    "for LR_nearest_jpeg); --config.data.val_spec=bicubic validates on MATLAB bicubic LR instead"]
    # the validation LR is the damaged one, the same as evaluate --spec makes
    plain = validation_set(_paired(data, val=str(hr), val_spec="bicubic"), report=said.append)
    assert evaluator.baseline["bicubic_psnr"] < plain.baseline["bicubic_psnr"] - 1.0
    assert len(said) == 1  # an explicit val_spec is used as it is, silently
    hr_run = config_lib.base_config()
    hr_run.data.spec = "blur(1.5) > bicubic"
    assert resolve_val_spec(hr_run) and hr_run.data.val_spec == "blur(1.5) > bicubic"


def test_bicubic_training_data_keeps_bicubic_validation(tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(picture(48, 48)).save(hr / "a.png")
    assert cli.run(prepare.main, [str(hr), "--out", str(tmp_path / "d"), "--scales", "2", "--workers", "1",
                                  "--no-progress"]) == 0
    c = _paired(tmp_path / "d")
    assert training_damage(c)[0] is None and resolve_val_spec(c) is None and c.data.val_spec == ""
    for spec in ("", "bicubic", "bicubic(2)"):
        c = config_lib.base_config()
        c.data.spec = spec
        assert resolve_val_spec(c) is None and c.data.val_spec == ""
    no_manifest = tmp_path / "div2k"
    (no_manifest / "HR").mkdir(parents=True)
    assert training_damage(_paired(no_manifest))[0] is None


def test_a_run_validated_on_bicubic_before_resumes_with_val_spec_bicubic():
    """Runs stored data.val_spec '' when '' meant bicubic; asking for bicubic now ('bicubic') is
    the same protocol, while the filled-in damage is a protocol change (refused, named)."""
    stored = config_lib.base_config().to_dict()
    now = config_lib.base_config()
    now.data.val_spec = "bicubic"
    assert config_lib.differences(stored, now.to_dict()) == []
    now.data.val_spec = POSTER
    with pytest.raises(config_lib.ProtocolChange, match=r"data.val_spec '' -> 'nearest > jpeg\(30,60\)'"):
        config_lib.resume_changes(stored, now.to_dict(), False)


def test_summary_reads_the_best_checkpoint_record(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 2, "psnr": 30.0, "bicubic_psnr": 29.0, "protocol": 0}\nnot json\n'
        '{"step": 4, "psnr": 31.0, "bicubic_psnr": 29.0, "protocol": 0}\n')
    assert [r["step"] for r in summary.metrics_records(tmp_path)] == [2, 4]
    assert summary.best_record(tmp_path, 0) is None  # no checkpoint: nothing the tools read
    assert summary.python_command() in ("python",) or Path(summary.python_command()).name.startswith("python")
