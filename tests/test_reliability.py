"""The trainer under interruption: SIGKILL at bad moments, SIGTERM / SIGINT, NaN guard, bad workdir.

Every run is a real ``python -m edsr_jax.train`` process on the tiny config. The kill chain
restarts the same command after each interruption and must end bitwise equal to one
uninterrupted run (resume is exact: same params, optimizer state and data position).
"""

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import ROOT, assert_documented_rows, torch_or_skip
from edsr_jax.training import checkpoint
from edsr_jax.training.restore import restore_params

TINY = str(ROOT / "tests" / "configs" / "tiny.py")
CACHE = str(ROOT / ".cache" / "test-decoded")
STEPS = 24  # checkpoints every 3 steps (tiny.py); enough room for five interruptions
RESUME = re.compile(r"resuming from step (\d+)")


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return env


def _cmd(workdir, *overrides):
    return [sys.executable, "-m", "edsr_jax.train", f"--config={TINY}", f"--workdir={workdir}",
            f"--config.data.cache_dir={CACHE}", *overrides]


def start(workdir, *overrides, log):
    """Start a training process; stdout+stderr go to ``log`` (a path)."""
    return subprocess.Popen(_cmd(workdir, *overrides), cwd=ROOT, env=_env(),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def run(workdir, *overrides, timeout=120):
    return subprocess.run(_cmd(workdir, *overrides), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def listing(workdir):
    """``(complete steps, temporary names)`` in the checkpoint folder."""
    ck = Path(workdir) / "checkpoints"
    names = os.listdir(ck) if ck.is_dir() else []
    return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if "tmp" in n)


def wait_for(proc, condition, timeout=90.0):
    """Poll every 2 ms until ``condition()`` is true; False when the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("training did not reach the expected point in time")


def final_params(workdir):
    _, params, _ = restore_params(Path(workdir), prefer_ema=False)
    return jax.tree_util.tree_map(np.asarray, params)


def assert_bitwise_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def resumed_step(log):
    m = RESUME.findall(Path(log).read_text(errors="replace"))
    return int(m[-1]) if m else None


# ---------------------------------------------------------------- kill / signal chain


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A started uninterrupted run of STEPS steps; waited for when first used."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = start(workdir, f"--config.train.steps={STEPS}", log=workdir.parent / "reference.log")
    yield workdir, proc
    if proc.poll() is None:
        proc.kill()


@pytest.mark.slow
def test_kills_and_signals_resume_from_complete_checkpoints_bitwise(reference, tmp_path):
    workdir = tmp_path / "run"
    steps = f"--config.train.steps={STEPS}"
    history = []  # (what, latest complete step at the interruption, resumed step of the next run)
    last = None

    def latest():
        done, _ = listing(workdir)
        return max(done) if done else None

    def restart(i):
        log = tmp_path / f"run{i}.log"
        return start(workdir, steps, log=log), log

    # 1. SIGKILL while an async checkpoint is being written (a temporary folder exists and an
    #    older complete one too), best-effort: the save window is a few hundred milliseconds.
    proc, log = restart(1)
    wait_for(proc, lambda: bool(listing(workdir)[1]) and bool(listing(workdir)[0]))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    complete, tmp = listing(workdir)
    assert proc.returncode == -signal.SIGKILL
    assert complete, "a complete checkpoint existed before the kill"
    history.append(("kill during save", max(complete), tmp))
    last = max(complete)

    # 2. SIGKILL right after a new checkpoint completes.
    proc, log = restart(2)
    wait_for(proc, lambda: latest() is not None and latest() > last)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert resumed_step(log) == last, Path(log).read_text()[-2000:]
    last = max(listing(workdir)[0])
    history.append(("kill after save", last, None))

    # 3. SIGKILL mid-training: a short delay after the next checkpoint appears.
    proc, log = restart(3)
    wait_for(proc, lambda: latest() is not None and latest() > last)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert resumed_step(log) == last, Path(log).read_text()[-2000:]
    last = max(listing(workdir)[0])
    history.append(("kill mid-step", last, None))

    # 4./5. SIGTERM then SIGINT once the loop runs (a new checkpoint folder of this run
    #    appears): checkpoint at the current step, exit 0, say how to resume.
    for i, sig in ((4, signal.SIGTERM), (5, signal.SIGINT)):
        proc, log = restart(i)
        before = last
        # A *complete* newer step: a stray temporary folder left by kill 3 must not count,
        # or the signal would land before this run has even started its loop.
        wait_for(proc, lambda: latest() is not None and latest() > before)
        proc.send_signal(sig)
        proc.wait(60)
        text = Path(log).read_text(errors="replace")
        assert resumed_step(log) == before, text[-2000:]
        assert proc.returncode == 0, text[-2000:]
        assert "Traceback" not in text
        m = re.search(rf"stopped by signal {int(sig)} at step (\d+); checkpoint saved\. "
                      r"Re-run the same command to resume\.", text)
        assert m, text[-2000:]
        stopped = int(m.group(1))
        assert stopped < STEPS, "the signal must land before the planned end"
        complete, tmp = listing(workdir)
        assert max(complete) == stopped and not tmp
        last = stopped
        history.append((sig.name, stopped, None))

    # 6. Finish; compare with the uninterrupted run.
    proc, log = restart(6)
    assert proc.wait(120) == 0, Path(log).read_text()[-2000:]
    assert resumed_step(log) == last
    complete, tmp = listing(workdir)
    assert max(complete) == STEPS and not tmp, "stray temporary folders are cleaned on restart"

    ref_dir, ref_proc = reference
    assert ref_proc.wait(120) == 0, (ref_dir.parent / "reference.log").read_text()[-2000:]
    assert_bitwise_equal(final_params(workdir), final_params(ref_dir))
    print("interruptions:", history)


@pytest.mark.slow
def test_stray_temporary_folder_is_ignored_and_removed(reference, tmp_path):
    """A partial save left by a kill (named like Orbax's own) is never resumed from."""
    import shutil

    ref_dir, ref_proc = reference
    assert ref_proc.wait(120) == 0
    src = ref_dir / "checkpoints" / str(STEPS)
    workdir = tmp_path / "w"
    shutil.copytree(src, workdir / "checkpoints" / str(STEPS))
    # A half-written newer step: a temporary folder holding one item, never committed.
    stray = workdir / "checkpoints" / f"{STEPS + 3}.orbax-checkpoint-tmp"
    shutil.copytree(src / "params", stray / "params")
    r = run(workdir, f"--config.train.steps={STEPS + 3}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from step {STEPS}" in r.stderr
    complete, tmp = listing(workdir)
    assert complete[-1] == STEPS + 3 and not tmp


# ---------------------------------------------------------------- NaN guard


def _tb_scalars(workdir, tag):
    """``[(step, value)]`` of one scalar tag from the TensorBoard event files (TFRecord)."""
    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted((Path(workdir) / "tb").glob("events.out.tfevents.*")):
        data = f.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                if v.tag == tag:
                    out.append((ev.step, v.simple_value))
    return out


@pytest.mark.slow
def test_nan_guard_stop_and_skip(tmp_path):
    """lr = 1e30: step 1 makes the weights ~1e30 (finite), step 2's forward pass overflows."""
    common = ("--config.optim.lr=1e30", "--config.train.steps=6", "--config.train.checkpoint_every=1",
              "--config.train.log_every=1")
    stop = start(tmp_path / "stop", *common, log=tmp_path / "stop.log")
    skip = start(tmp_path / "skip", *common, "--config.train.nan_policy=skip", log=tmp_path / "skip.log")
    assert stop.wait(120) == 1
    text = (tmp_path / "stop.log").read_text(errors="replace")
    assert "error: non-finite loss or gradient at step 2; training stopped" in text, text[-2000:]
    assert "Traceback" not in text
    complete, tmp = listing(tmp_path / "stop")
    assert complete == [1] and not tmp, "the last good checkpoint is complete, none after it"
    for leaf in jax.tree_util.tree_leaves(final_params(tmp_path / "stop")):
        assert np.isfinite(leaf).all()

    assert skip.wait(120) == 0, (tmp_path / "skip.log").read_text()[-2000:]
    skipped = dict(_tb_scalars(tmp_path / "skip", "train/skipped_steps"))
    assert skipped[6] == 5, skipped  # every step after the first was skipped
    assert skipped[1] == 0
    for leaf in jax.tree_util.tree_leaves(final_params(tmp_path / "skip")):
        assert np.isfinite(leaf).all()


# ---------------------------------------------------------------- workdir checks


@pytest.mark.parametrize("kind", ["under_a_file", "read_only_dir"])
def test_unwritable_workdir_is_refused_before_training(tmp_path, kind):
    if kind == "under_a_file":
        (tmp_path / "file").write_text("x")
        workdir = tmp_path / "file" / "sub"
    else:
        if os.geteuid() == 0:
            pytest.skip("running as root: permission bits do not stop writes (under_a_file covers it)")
        workdir = tmp_path / "ro"
        workdir.mkdir()
        workdir.chmod(0o555)
    try:
        r = run(workdir, "--config.train.steps=3", timeout=60)
    finally:
        if kind == "read_only_dir":
            workdir.chmod(0o755)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().startswith("error: --workdir") and "not writable" in r.stderr
    assert str(workdir) in r.stderr and "Traceback" not in r.stderr
    assert not (workdir / "checkpoints").exists() if workdir.parent.is_dir() else True


# ---------------------------------------------------------------- damaged checkpoints (issue 15.1)


def _data_files(item_dir):
    """The array data files of one Orbax item (OCDBT ``d/`` folders)."""
    return sorted(p for p in Path(item_dir).rglob("*") if p.is_file() and p.parent.name == "d")


DAMAGE = {
    "truncated_params_data": lambda d: [f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])
                                        for f in _data_files(d / "params")],
    "emptied_params_data": lambda d: [f.write_bytes(b"") for f in _data_files(d / "params")],
    "deleted_params": lambda d: __import__("shutil").rmtree(d / "params"),
    "deleted_params_manifest": lambda d: (d / "params" / "manifest.ocdbt").unlink(),
    "deleted_config": lambda d: __import__("shutil").rmtree(d / "config"),
    "emptied_config": lambda d: [f.write_text("") for f in (d / "config").iterdir() if f.name != "commit_success.txt"],
}
DAMAGED_ITEM = {"truncated_params_data": "params", "emptied_params_data": "params", "deleted_params": "params",
                "deleted_params_manifest": "params", "deleted_config": "config", "emptied_config": "config"}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A finished tiny run with complete checkpoints at steps 3 and 6 (keep_last=2)."""
    workdir = tmp_path_factory.mktemp("two_steps") / "run"
    r = run(workdir, "--config.train.steps=6", "--config.train.eval_every=1000000")
    assert r.returncode == 0, r.stderr[-2000:]
    assert listing(workdir)[0] == [3, 6]
    return workdir


def damaged_copy(src, dest, kind, step=6):
    import shutil

    shutil.copytree(src, dest)
    DAMAGE[kind](Path(dest) / "checkpoints" / str(step))
    return Path(dest)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_newest_step_falls_back_for_readers(two_steps, tmp_path, kind):
    """``restore_params`` (evaluate, upscale, export, fine-tuning) warns naming the step and
    the item, then reads step 3, bitwise equal to reading step 3 directly."""
    workdir = damaged_copy(two_steps, tmp_path / "w", kind)
    said = []
    _, params, _ = restore_params(workdir, prefer_ema=False, say=said.append)
    assert len(said) == 2, said
    assert f"step 6 in {workdir / 'checkpoints'} is damaged: item '{DAMAGED_ITEM[kind]}'" in said[0], said
    assert said[1] == "using checkpoint step 3 (the newest that reads completely)"
    _, step3, _ = restore_params(workdir / "checkpoints" / "3", prefer_ema=False)
    assert_bitwise_equal(params, step3)
    # The damaged step named explicitly is refused, naming it and the item, never replaced.
    with pytest.raises(checkpoint.CheckpointDamaged, match=rf"checkpoints/6: item '{DAMAGED_ITEM[kind]}'"):
        restore_params(workdir / "checkpoints" / "6")


def test_no_readable_step_is_one_error_naming_each(two_steps, tmp_path):
    workdir = damaged_copy(two_steps, tmp_path / "w", "deleted_params")
    DAMAGE["emptied_config"](workdir / "checkpoints" / "3")
    with pytest.raises(checkpoint.CheckpointDamaged) as e:
        restore_params(workdir, say=lambda _: None)
    assert "step 6: params missing" in str(e.value) and "step 3: config unreadable" in str(e.value)


@pytest.mark.slow
def test_damaged_newest_step_every_tool_falls_back(two_steps, tmp_path, capfd):
    """evaluate, upscale and export on a workdir whose newest step lost a data file: a warning
    naming step 6 and 'params', the result made from step 3, no traceback."""
    from PIL import Image

    from edsr_jax import evaluate, export, upscale

    workdir = damaged_copy(two_steps, tmp_path / "w", "truncated_params_data")
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(images / "a.png")
    warning = f"warning: checkpoint step 6 in {workdir / 'checkpoints'} is damaged: item 'params'"
    runs = {
        "upscale": (upscale.main, [images, "--checkpoint", workdir, "--out", tmp_path / "up"], 0),
        "evaluate": (evaluate.main, ["--checkpoint", workdir, "--scales", "2", images], 0),
        "export": (export.main, ["--checkpoint", workdir, "--format", "stablehlo", "--out", tmp_path / "m.shlo"], 0),
    }
    from edsr_jax.io import cli

    for tool, (main, argv, code) in runs.items():
        got = cli.run(main, [str(a) for a in argv])
        out = capfd.readouterr()
        assert got == code, (tool, out.err[-2000:])
        assert warning in out.err, (tool, out.err[-2000:])
        assert "using checkpoint step 3" in out.err and "Traceback" not in out.err, (tool, out.err[-2000:])
    assert (tmp_path / "up" / "a.png").exists() and (tmp_path / "m.shlo").exists()


# ---------------------------------------------------------------- one trainer per workdir (issue 15.2)

HOLD = ("import sys, time; from edsr_jax.io.run_lock import RunLock; l = RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)")


def test_run_lock_names_the_holder_and_is_taken_over_after_kill_9(tmp_path):
    from edsr_jax.io.run_lock import RunLock, WorkdirBusy

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusy, match=rf"another trainer is running in it \(host [^,]+, pid {holder.pid}, since "):
            RunLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
    with RunLock(tmp_path) as lock:  # the kernel released it with the dead process
        assert lock.previous and lock.previous["pid"] == holder.pid
    with RunLock(tmp_path) as lock:  # a clean release leaves no holder record
        assert lock.previous is None


@pytest.mark.slow
def test_trainer_falls_back_from_a_damaged_newest_step(two_steps, tmp_path):
    """The trainer names the damaged step and item, resumes from step 3, sets the damaged
    step aside (never deleted) and finishes; no step restores -> one error line, exit 2."""
    workdir = damaged_copy(two_steps, tmp_path / "w", "truncated_params_data")
    r = run(workdir, "--config.train.steps=9")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoint step 6 in {workdir / 'checkpoints'} is damaged: item 'params'" in r.stderr, r.stderr[-3000:]
    assert "resuming from step 3" in r.stderr and "Traceback" not in r.stderr
    assert (workdir / "checkpoints" / "6.damaged").is_dir()
    assert listing(workdir)[0][-1] == 9

    broken = damaged_copy(two_steps, tmp_path / "b", "deleted_config")
    DAMAGE["deleted_params"](broken / "checkpoints" / "3")
    ck = broken / "checkpoints"
    before = sorted((str(p), p.stat().st_size) for p in ck.rglob("*"))
    r = run(broken, "--config.train.steps=9")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert "no checkpoint step reads completely" in lines[0] and "step 6: config missing" in lines[0]
    assert "nothing was started over it" in lines[0]
    assert sorted((str(p), p.stat().st_size) for p in ck.rglob("*")) == before, "checkpoints untouched"


@pytest.mark.slow
def test_trainer_announces_a_missing_data_iterator_item(two_steps, tmp_path):
    import shutil

    workdir = damaged_copy(two_steps, tmp_path / "w", "deleted_params")
    shutil.rmtree(workdir / "checkpoints" / "6")  # only step 3 is left
    shutil.rmtree(workdir / "checkpoints" / "3" / "data_iter")
    r = run(workdir, "--config.train.steps=6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "has no data_iter item; the data order from here on is not exactly that of an uninterrupted run" \
        in r.stderr, r.stderr[-3000:]
    assert "resuming from step 3" in r.stderr


@pytest.mark.slow
def test_second_trainer_on_a_workdir_exits_2_naming_the_first(tmp_path):
    workdir = tmp_path / "w"
    first = start(workdir, "--config.train.steps=100000", "--config.train.checkpoint_every=1",
                  "--config.train.keep_last=1", log=tmp_path / "first.log")
    try:
        wait_for(first, lambda: bool(listing(workdir)[0]))
        r = run(workdir, "--config.train.steps=100000", timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
        assert lines[0].startswith(f"error: --workdir {workdir}: another trainer is running in it (host ")
        assert f"pid {first.pid}," in lines[0]
        # Readers work while it writes: every read gets a complete step (the newest that reads).
        for _ in range(15):
            _, params, _ = restore_params(workdir, say=lambda _: None)
            assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree_util.tree_leaves(params))
        assert first.poll() is None, "the first trainer is undisturbed"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    last = max(listing(workdir)[0])
    r = run(workdir, f"--config.train.steps={last + 2}")  # the kernel released the dead holder's lock
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"pid {first.pid}" in r.stderr and "ended without releasing" in r.stderr
    assert f"resuming from step {last}" in r.stderr


@pytest.mark.slow
def test_resume_prints_config_changes_and_guards_the_protocol(two_steps, tmp_path):
    import json
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(two_steps, workdir)
    r = run(workdir, "--config.train.steps=7", "--config.optim.lr=5e-4", "--config.data.patch_size=10")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "optim.lr: 0.001 -> 0.0005" in r.stderr and "data.patch_size: 12 -> 10" in r.stderr, r.stderr[-3000:]

    r = run(workdir, "--config.train.steps=8", "--config.data.val_spec=nearest")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert "data.val_spec '' -> 'nearest'" in lines[0] and "--config.train.new_protocol=True" in lines[0]
    assert listing(workdir)[0][-1] == 7, "nothing was written"

    r = run(workdir, "--config.train.steps=8", "--config.data.val_spec=nearest", "--config.train.new_protocol=True",
            "--config.train.eval_every=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation protocol 1" in r.stderr, r.stderr[-3000:]
    records = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert records[-1]["step"] == 8 and records[-1]["protocol"] == 1
    assert checkpoint.step_metrics(workdir / "checkpoints" / "8")["protocol"] == 1


@pytest.mark.slow
def test_resume_turning_on_ema_and_clipping(two_steps, tmp_path):
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(two_steps, workdir)
    r = run(workdir, "--config.train.steps=7", "--config.train.ema=0.9", "--config.optim.clip_norm=1.0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "EMA" in r.stderr and "start from the restored weights" in r.stderr, r.stderr[-3000:]
    assert "opt_state carried over" in r.stderr
    assert "resuming from step 6" in r.stderr
    r = run(workdir, "--config.train.steps=8")  # and off again
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step 7" in r.stderr and "opt_state carried over" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("which", ["checkpoints", "step", "item", "imported", "new_inside_checkpoints"])
def test_a_workdir_is_a_run_not_any_folder(two_steps, tmp_path, which):
    if which == "imported":
        from edsr_jax.nets.edsr import ModelConfig

        cfg = ModelConfig(2, 2, 8)
        path = tmp_path / "imported"
        checkpoint.save_params_checkpoint(path, cfg, cfg.build().init(jax.random.key(0), np.zeros((1, 8, 8, 3))))
    else:
        path = {"checkpoints": two_steps / "checkpoints", "step": two_steps / "checkpoints" / "6",
                "item": two_steps / "checkpoints" / "6" / "params",
                "new_inside_checkpoints": two_steps / "checkpoints" / "newrun"}[which]
    before = sorted(str(p) for p in path.rglob("*"))
    r = run(path, "--config.train.steps=9")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: --workdir {path}: is "), r.stderr
    assert sorted(str(p) for p in path.rglob("*")) == before
    assert which != "new_inside_checkpoints" or not path.exists()


@pytest.mark.slow
def test_metrics_jsonl_torn_last_line_and_unopenable(two_steps, tmp_path):
    import json
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(two_steps, workdir)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "psnr": 2')  # a crash in the middle of a record
    r = run(workdir, "--config.train.steps=7", "--config.train.eval_every=1")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert lines[-2] == '{"step": 7, "psnr": 2' and json.loads(lines[-1])["step"] == 7

    bad = tmp_path / "bad"
    (bad / "metrics.jsonl").mkdir(parents=True)
    r = run(bad, "--config.train.steps=3")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "metrics.jsonl" in lines[0], r.stderr[-3000:]
    assert not (bad / "checkpoints").exists()


RUN_TABLE_EVENTS = [  # the first column of docs/bad_inputs.md's issue-15 table, one row per tested class
    "newest checkpoint step damaged (a data file truncated or emptied, an item folder, its manifest or its config deleted or emptied)",
    "no step of a workdir reads completely",
    "a damaged step folder named explicitly (`--checkpoint run/checkpoints/S`)",
    "a step without its data-iterator item",
    "a second `train` on a workdir in use",
    "the previous trainer was killed (`kill -9`)",
    "`evaluate`, `upscale`, `export` while a trainer writes",
    "resuming with other config values",
    "the same with `--config.train.new_protocol=True`",
    "`train.ema` turned on at resume",
    "`optim.clip_norm` turned on or off at resume",
    "`metrics.jsonl` with a torn last line (a crash mid-write)",
    "`metrics.jsonl` cannot be opened (e.g. it is a folder)",
    "a full disk in `train` (checkpoint, metrics), `prepare`, `export` (all formats, `--from-torch`), `evaluate --json / --save-images`, `upscale`",
]


def test_documented_run_table_matches_the_tests():
    assert_documented_rows(RUN_TABLE_EVENTS)


@pytest.mark.slow
def test_full_disk_during_training_is_one_line_and_resumable(tmp_path):
    """A 400 KiB tmpfs holds the first checkpoints of the tiny run, not all of them: one
    ``error:`` line naming the folder and the newest complete step, exit 2; after the disk
    grows, the same command resumes from that step (the unfinished save is never used)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        workdir = mnt / "w"
        r = run(workdir, "--config.train.steps=30", "--config.train.keep_last=10")
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        newest = max(listing(workdir)[0])
        assert errors[0] == (f"error: {workdir / 'checkpoints'}: could not write a checkpoint (no space left on "
                             f"device); the newest complete one is step {newest} (an unfinished save is never "
                             "resumed from)"), errors
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        r = run(workdir, f"--config.train.steps={newest + 3}", "--config.train.keep_last=10")
        assert r.returncode == 0 and f"resuming from step {newest}" in r.stderr, r.stderr[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_orbax_futures_failing_after_a_handled_write_error_stay_off_the_console():
    """After a full disk, asyncio reports an Orbax write's sibling future ("Future exception
    was never retrieved") whose message names only the OSError; the traceback it carries runs
    through Orbax, and that is what keeps it off the console. A future failing elsewhere is
    still reported."""
    import logging

    checkpoint.quiet_failed_reads()

    def failure(filename):
        code = compile("def write():\n    raise OSError(28, 'No space left on device')\n", filename, "exec")
        scope = {}
        exec(code, scope)
        try:
            try:
                scope["write"]()
            except OSError:
                scope["write"]()  # the second failure while handling the first, as Orbax's path writes show
        except OSError as e:
            return e

    def shown(filename):
        e = failure(filename)
        record = logging.getLogger("asyncio").makeRecord(
            "asyncio", logging.ERROR, __file__, 1,
            "Future exception was never retrieved\nfuture: <Future finished exception=%r>" % (e,),
            (), (type(e), e, e.__traceback__))
        return logging.getLogger("asyncio").filter(record)

    assert not shown("/site-packages/orbax/checkpoint/_src/path/async_path.py")
    assert shown("/site-packages/somewhere/else.py")


@pytest.mark.slow
@pytest.mark.parametrize("item", ["opt_state", "counters"])
def test_trainer_falls_back_when_an_optimiser_item_is_gone(two_steps, tmp_path, item):
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(two_steps, workdir)
    shutil.rmtree(workdir / "checkpoints" / "6" / item)
    r = run(workdir, "--config.train.steps=6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoint step 6 in {workdir / 'checkpoints'} is damaged: item '{item}' missing" in r.stderr
    assert "resuming from step 3" in r.stderr and "Traceback" not in r.stderr
    assert listing(workdir)[0][-1] == 6 and (workdir / "checkpoints" / "6.damaged").is_dir()


def test_best_checkpoint_ranking_stays_within_one_protocol(tmp_path):
    """A PSNR measured under an older validation protocol (higher, on easier images) never
    evicts or outranks the best of the current protocol, for the trainer's keep policy and
    for the tools (``ranked_steps``)."""
    directory = tmp_path / "checkpoints"
    current = {"protocol": 0}
    manager = checkpoint.make_manager(directory, keep_last=1, keep_best=1, protocol=lambda: current["protocol"])
    tree = {"w": np.zeros(3, np.float32)}
    scores = {1: (0, 40.0), 2: (0, 41.0), 3: (1, 25.0), 4: (1, 27.0), 5: (1, 26.0), 6: (1, 24.0)}
    for step, (protocol, psnr) in scores.items():
        current["protocol"] = protocol
        checkpoint.save(manager, step, {"params": tree}, config={"model": {}},
                        metrics={"psnr": psnr, "protocol": protocol})
        manager.wait_until_finished()
    assert manager.best_step() == 4
    manager.close()
    assert checkpoint.step_numbers(directory) == [6, 4]  # the newest and this protocol's best
    assert checkpoint.ranked_steps(directory) == [4, 6]


@pytest.mark.slow
def test_only_damaged_checkpoints_left_is_no_fresh_start(two_steps, tmp_path):
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(two_steps, workdir)
    for step in (3, 6):
        (workdir / "checkpoints" / str(step)).rename(workdir / "checkpoints" / f"{step}.damaged")
    r = run(workdir, "--config.train.steps=9")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "holds only damaged checkpoints" in lines[-1], r.stderr[-3000:]
    assert listing(workdir)[0] == []


# ---------------------------------------------------------------- concurrent writers (issue 26.1)


def _params_checkpoint(path, seed):
    """A 2-block, 8-feature x2 EDSR saved as a params-only checkpoint (``seed`` picks the weights)."""
    import jax.numpy as jnp

    from edsr_jax.nets.edsr import ModelConfig

    cfg = ModelConfig(2, 2, 8)
    params = cfg.build().init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)))
    checkpoint.save_params_checkpoint(path, cfg, params, note=f"seed {seed}")
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_models")
    return _params_checkpoint(root / "a", 0), _params_checkpoint(root / "b", 1)


def _images(folder, n=3, side=24):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (side, side, 3), np.uint8)).save(
            folder / f"{i}.png")
    return folder


@pytest.fixture
def rival(monkeypatch):
    """Another process's file appears at the final name after the writer checked it and before
    it publishes (the deterministic race): ``rival(path)`` arms it for ``path`` (a file, or a
    folder holding ``rival.txt``); the returned set lists the names taken."""
    from edsr_jax.io import outputs

    armed: dict[Path, str] = {}
    taken: set[Path] = set()
    publish, publish_dir = outputs._publish, outputs._publish_dir

    def take(path):
        path = Path(path)
        if path in armed and path not in taken:
            taken.add(path)
            if armed[path] == "dir":
                path.mkdir()
                (path / "rival.txt").write_text("rival")
            else:
                path.write_bytes(b"rival")

    monkeypatch.setattr(outputs, "_publish", lambda tmp, path: (take(path), publish(tmp, path))[1])
    monkeypatch.setattr(outputs, "_publish_dir", lambda tmp, path: (take(path), publish_dir(tmp, path))[1])

    def arm(path, kind="file"):
        armed[Path(path)] = kind
        return taken

    return arm


def _no_temporaries(folder):
    left = [str(p) for p in Path(folder).rglob(".tmp-*")]
    assert not left, left


def test_every_writer_leaves_a_file_another_process_created_meanwhile(tmp_path, two_models, rival, capsys):
    """upscale, evaluate --json / --save-images, export (a file; --from-torch: a folder) and
    prepare, each racing a file that appears between its check and its write: the other's file
    stays byte for byte, the writer says ``created by another process`` naming it and exits
    non-zero; no temporary file is left."""
    from edsr_jax import evaluate, export, prepare, upscale
    from edsr_jax.io import cli

    def run_cli(main, argv):
        code = cli.run(main, [str(a) for a in argv])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, err

    src = _images(tmp_path / "in")
    cases = [
        ("upscale", upscale.main, ["--checkpoint", two_models[0], "--out", tmp_path / "u", src],
         tmp_path / "u" / "1.png", 1),
        ("evaluate --json", evaluate.main, ["--bicubic", "--scales", 2, "--json", tmp_path / "s.json", src],
         tmp_path / "s.json", 1),
        ("evaluate --save-images", evaluate.main, ["--bicubic", "--scales", 2, "--save-images", tmp_path / "sr", src],
         tmp_path / "sr" / "in" / "x2" / "0_bicubic.png", 1),
        ("export", export.main, ["--checkpoint", two_models[0], "--out", tmp_path / "m.stablehlo"],
         tmp_path / "m.stablehlo", 2),
        ("prepare", prepare.main, [src, "--out", tmp_path / "p", "--scales", 2, "--workers", 1, "--no-progress"],
         tmp_path / "p" / "HR" / "0002.png", 1),
    ]
    for what, main, argv, target, want in cases:
        target.parent.mkdir(parents=True, exist_ok=True)
        taken = rival(target)
        code, err = run_cli(main, argv)
        assert target in taken, (what, "the race was not staged", err)
        assert code == want and f"{target}: created by another process" in err, (what, code, err)
        assert target.read_bytes() == b"rival", what
    # the others were written; prepare did not record the taken file as its own
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["0.png", "1.png", "2.png"]
    manifest = (tmp_path / "p" / "manifest.json").read_text()
    assert '"HR/0001.png"' in manifest and '"HR/0002.png"' not in manifest
    _no_temporaries(tmp_path)
    # a re-run of prepare names the rival file as a conflict, never replaces it
    code, err = run_cli(prepare.main, cases[-1][2])
    assert code == 1 and f"{tmp_path / 'p' / 'HR' / '0002.png'}: exists and differs" in err, err


def test_import_into_a_folder_another_process_created_meanwhile(tmp_path, two_models, rival, capsys):
    """``export --from-torch`` publishes its checkpoint folder with rename-no-replace: a folder
    another process made (and filled) meanwhile stays, one error line names it."""
    torch_or_skip()
    from edsr_jax import export
    from edsr_jax.io import cli

    pt = tmp_path / "w.pt"
    assert cli.run(export.main, ["--checkpoint", str(two_models[0]), "--out", str(pt)]) == 0
    taken = rival(tmp_path / "imp", "dir")
    code = cli.run(export.main, ["--from-torch", str(pt), "--out", str(tmp_path / "imp")])
    err = capsys.readouterr().err
    assert taken and code == 2 and f"error: {tmp_path / 'imp'}: created by another process" in err, err
    assert sorted(p.name for p in (tmp_path / "imp").iterdir()) == ["rival.txt"]
    _no_temporaries(tmp_path)


def test_posters_and_the_stablehlo_runner_leave_a_file_another_process_created_meanwhile(
        tmp_path, two_models, rival, capsys):
    """``posters``: a poster (or the record) another process created between the check and the
    write stays byte for byte, ``not written:`` names it, the other posters are written and
    recorded, exit 1. The StableHLO runner: one ``error:`` line, exit 2, the other's file kept."""
    import json

    from edsr_jax import export, posters
    from edsr_jax.inference import stablehlo_runner
    from edsr_jax.io import cli

    small = ["--count", "3", "--size", "256x144"]
    for taken_name, recorded in [("poster-s0-0001.png", ["poster-s0-0000.png", "poster-s0-0002.png"]),
                                 ("posters-s0.json", None)]:
        out = tmp_path / taken_name.replace(".", "_")
        out.mkdir()
        taken = rival(out / taken_name)
        code = cli.run(posters.main, ["--out", str(out), *small])
        err = capsys.readouterr().err
        assert taken and code == 1 and "Traceback" not in err, err
        assert f"not written: {out / taken_name}: created by another process" in err, err
        assert (out / taken_name).read_bytes() == b"rival"
        assert len(list(out.glob("poster-*.png"))) == 3
        if recorded:
            assert json.loads((out / "posters-s0.json").read_text())["files"] == recorded

    art = tmp_path / "m.stablehlo"
    assert cli.run(export.main, ["--checkpoint", str(two_models[0]), "--out", str(art)]) == 0
    src = _images(tmp_path / "in", n=1) / "0.png"
    for name in ("sr.png", "sr.npy"):
        target = tmp_path / name
        taken = rival(target)
        code = stablehlo_runner.run([str(art), str(src), str(target)])
        err = capsys.readouterr().err
        assert taken and code == 2, err
        assert err.strip() == (f"error: {target}: created by another process while this one was writing it; "
                               "left as it is (choose another output name)"), err
        assert target.read_bytes() == b"rival"
    _no_temporaries(tmp_path)


@pytest.mark.parametrize("fallback", [False, True])
def test_exclusive_publish_with_and_without_hard_links(tmp_path, monkeypatch, fallback):
    """``atomic_write`` without overwrite never replaces a file, by hard link or, on a file
    system without hard links (``os.link`` EPERM) / without renameat2, by an O_EXCL claim; with
    overwrite it replaces. Folders (``atomic_dir``) the same way."""
    import errno as errno_

    from edsr_jax.io import outputs

    if fallback:
        def no_link(src, dst):
            raise OSError(errno_.EPERM, "Operation not permitted")

        monkeypatch.setattr(outputs.os, "link", no_link)
        monkeypatch.setattr(outputs, "_rename_noreplace", lambda src, dst: False)
    path = tmp_path / "f.txt"
    assert outputs.atomic_write(path, "one") == path and path.read_text() == "one"
    publish = outputs._publish
    monkeypatch.setattr(outputs, "_publish", lambda tmp, p: (p.write_text("other"), publish(tmp, p)))
    with pytest.raises(outputs.TakenMeanwhile, match="created by another process"):
        outputs.atomic_write(tmp_path / "g.txt", "mine")
    assert (tmp_path / "g.txt").read_text() == "other"
    outputs.atomic_write(path, "two", overwrite=True)
    assert path.read_text() == "two"
    with outputs.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "d" / "x").read_text() == "x"
    publish_dir = outputs._publish_dir
    monkeypatch.setattr(outputs, "_publish_dir",
                        lambda tmp, p: (p.mkdir(), (p / "y").write_text("y"), publish_dir(tmp, p)))
    with pytest.raises(outputs.TakenMeanwhile):
        with outputs.atomic_dir(tmp_path / "e") as tmp:
            (tmp / "x").write_text("mine")
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "e", "f.txt", "g.txt"], "no temporaries left"


@pytest.mark.slow
def test_two_upscale_processes_into_one_folder_never_replace_each_other(tmp_path, two_models):
    """Two real ``python -m edsr_jax.upscale`` processes, different models, one ``--out``, started
    together: every output file holds the model of the process that says it wrote it, and the
    other process says ``not written`` for it (or refused the folder at its check, exit 2)."""
    from PIL import Image

    from edsr_jax.inference.infer import Upscaler

    src = _images(tmp_path / "in", n=4)
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "edsr_jax.upscale", str(src), "--checkpoint", str(ck),
                               "--out", str(out)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for ck in two_models]
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert all("Traceback" not in e for e in errs), errs
    expected = [{f.name: Upscaler.from_checkpoint(ck)(np.asarray(Image.open(f).convert("RGB")))
                 for f in sorted(src.iterdir())} for ck in two_models]
    for name in sorted(p.name for p in src.iterdir()):
        got = np.asarray(Image.open(out / name))
        writers = [k for k in (0, 1) if np.array_equal(got, expected[k][name])]
        assert len(writers) == 1, name
        w = writers[0]
        assert f"not written: {out / name}" not in errs[w], (name, errs[w])
        other = 1 - w
        assert (f"not written: {out / name}: " in errs[other]  # "created by another process" or "exists"
                or (procs[other].returncode == 2 and "exist already" in errs[other])), (name, errs[other])
    assert sorted(p.returncode for p in procs) in ([0, 1], [1, 1], [0, 2]), [p.returncode for p in procs]
    _no_temporaries(out)


# ---------------------------------------------------------------- interrupted preparation (issue 26.2)

PREPARE_SPEC = "blur(0.5,1.5) > bicubic > jpeg(30,90)"


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    """40 noise images of 384 x 384: a few seconds of work for two workers at x2, x3, x4."""
    return _images(tmp_path_factory.mktemp("prep") / "hr", n=40, side=384)


def _prepare(hr, out, *extra):
    return [sys.executable, "-m", "edsr_jax.prepare", str(hr), "--out", str(out), "--scales", "2", "3", "4",
            "--spec", PREPARE_SPEC, "--workers", "2", "--no-progress", *extra]


def _start_prepare(hr, out, *extra):
    """A real prepare in its own session (a terminal's Ctrl-C reaches its whole group), once it
    has written its first files; returns (process, its child processes' pids)."""
    # SIGINT not ignored in the child: a test runner started in the background ignores it, and an
    # ignored signal stays ignored across exec (a handler is reset to the default there).
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(_prepare(hr, out, *extra), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, handler)
    deadline = time.monotonic() + 90
    while not (out / "HR").is_dir() or len(list((out / "HR").glob("*.png"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    kids = _descendants(proc.pid)
    assert len(kids) >= 2, kids  # the workers (and multiprocessing's resource tracker)
    return proc, kids


def _descendants(pid):
    """Every process below ``pid`` (from /proc's children lists)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _running(pid):
    """True while ``pid`` exists and is not a zombie (an ended process nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _assert_all_ended(pids, within=5.0):
    deadline = time.monotonic() + within
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _running(p)], "processes of the killed prepare still run"


def _resume_and_check(hr, out, tmp_path):
    """Re-run the same command: it finishes (exit 0) from where the stopped one was, leaves no
    temporary file, and the outputs are those of an uninterrupted run (three images checked
    against ``process_source`` written elsewhere, byte for byte)."""
    from edsr_jax.data.prepare import make_settings, process_source

    r = subprocess.run(_prepare(hr, out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "already present" in r.stdout and not list(out.rglob(".tmp-*"))
    settings = make_settings(PREPARE_SPEC, (2, 3, 4), None, None, 0)
    sources = sorted(hr.iterdir())
    for i in (1, 20, 40):
        ref = tmp_path / f"ref{i}"
        res = process_source(str(sources[i - 1]), i, str(ref), settings, 4, frozenset(), False)
        for rec in res["records"].values():
            for rel in [rec["hr"]] + [v["path"] for v in rec["lr"].values()]:
                assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_prepare_stopped_by_a_signal_says_so_leaves_nothing_running_and_resumes(hr_folder, tmp_path, sig):
    """SIGTERM (to the process) or a terminal's Ctrl-C (SIGINT to its group): one line saying
    how to resume, exit 143 / 130, no traceback, every worker ended; the re-run completes."""
    out = tmp_path / "p"
    proc, kids = _start_prepare(hr_folder, out)
    if sig == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    what = "terminated (SIGTERM)" if sig == "SIGTERM" else "interrupted"
    assert proc.returncode == (143 if sig == "SIGTERM" else 130), err
    assert "Traceback" not in err and lines[-1] == (
        f"{what}: prepare stopped; what was written is recorded in {out / 'manifest.json'}: "
        "re-run the same command to resume"), err
    _assert_all_ended(kids)
    _resume_and_check(hr_folder, out, tmp_path)


@pytest.mark.slow
def test_prepare_killed_leaves_no_worker_running_or_writing(hr_folder, tmp_path):
    """``kill -9`` of prepare: its workers (and multiprocessing's resource tracker) end with it
    at once, nothing is written afterwards; the temporary files the kill left are removed by the
    re-run, which completes."""
    out = tmp_path / "p"
    proc, kids = _start_prepare(hr_folder, out)
    proc.kill()
    proc.communicate(timeout=30)
    _assert_all_ended(kids, within=3.0)
    before = sorted((p, p.stat().st_size) for p in out.rglob("*") if p.is_file())
    time.sleep(1.0)
    assert sorted((p, p.stat().st_size) for p in out.rglob("*") if p.is_file()) == before, "still written"
    _resume_and_check(hr_folder, out, tmp_path)


@pytest.mark.slow
def test_a_killed_prepare_worker_is_one_error_line_and_resumable(hr_folder, tmp_path):
    out = tmp_path / "p"
    proc, kids = _start_prepare(hr_folder, out)
    workers = [k for k in kids if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("error: a worker process of prepare ended abruptly (killed, or out of memory); ")
    assert lines[-1].endswith("re-run the same command to resume"), err
    _assert_all_ended(kids)
    _resume_and_check(hr_folder, out, tmp_path)


@pytest.mark.slow
def test_one_prepare_per_output_folder(hr_folder, tmp_path):
    """A second prepare on a folder in use (here: adding another LR variant) is one error line
    naming the first one's pid, exit 2, and writes nothing; the first is undisturbed."""
    out = tmp_path / "p"
    proc, kids = _start_prepare(hr_folder, out)
    second = subprocess.run(_prepare(hr_folder, out, "--name", "other", "--scales", "2"), cwd=ROOT,
                            env=_env(), capture_output=True, text=True, timeout=60)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith(f"error: --out {out}: another prepare is running in it (host ")
    assert f"pid {proc.pid}," in lines[0], lines
    assert not (out / "LR_other").exists()
    assert proc.poll() is None, "the first prepare is undisturbed"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    _assert_all_ended(kids)
    # the lock died with its holder: the variant is added now
    r = subprocess.run(_prepare(hr_folder, out, "--name", "other", "--scales", "2"), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_sigterm_is_ctrl_c_for_every_command(capsys):
    """``cli.run`` turns SIGTERM into ``cli.Terminated`` (a KeyboardInterrupt): one line, exit 143,
    the command's own hint added; the previous SIGTERM handler is back afterwards."""
    from edsr_jax.io import cli

    def terminated(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt as e:
            e.hint = "re-run to resume"
            raise
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert cli.run(terminated, []) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM): re-run to resume\n"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_prepare_starts_its_workers_is_delivered_not_lost():
    """While the workers start, the parent holds SIGINT back from them (they inherit it
    blocked, so a Ctrl-C prints no traceback from a worker still importing); a Ctrl-C that
    comes then still stops the parent (it was ignored there before, and lost)."""
    from edsr_jax.data.prepare import _workers_ignore_sigint

    probe = "import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set()))"
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner's worker may ignore it
    try:
        with pytest.raises(KeyboardInterrupt):
            with _workers_ignore_sigint():
                child = subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert child.communicate(timeout=60)[0].strip() == "True"  # started with SIGINT blocked
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the parent's mask restored
