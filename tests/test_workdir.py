"""A training workdir's files (edsr_jax/training/workdir.py, run_log.py, io/run_lock.py): checked
before a run writes (folders that are files, links leading out, an unreadable init_from), logs
kept true to the checkpoints (a fresh start sets an earlier run's logs aside; a resume from an
older step supersedes the later records), strict JSON records, and a TensorBoard writer that
meets a full disk."""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, assert_documented_rows
from edsr_jax.io import cli
from edsr_jax.io.run_lock import CannotLock, RunLock
from edsr_jax.training import run_log, workdir

TINY = str(ROOT / "tests" / "configs" / "tiny.py")
CACHE = str(ROOT / ".cache" / "test-decoded")


def _strict(line: str):
    """json.loads that refuses the non-JSON tokens Infinity / NaN, as strict parsers do."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def _tree(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.is_dir() or p.read_bytes()) for p in folder.rglob("*")) \
        if folder.exists() else []


# ---------------------------------------------------------------- check: before anything is written


@pytest.mark.parametrize("name", ["checkpoints", "tb"])
@pytest.mark.parametrize("kind", ["file", "broken link"])
def test_checkpoints_or_tb_that_is_not_a_folder_is_one_line(tmp_path, name, kind):
    w = tmp_path / "w"
    w.mkdir()
    if kind == "file":
        (w / name).write_text("not a folder")
    else:
        (w / name).symlink_to(tmp_path / "nowhere")
    with pytest.raises(cli.UsageError) as e:
        workdir.check(w)
    assert str(e.value) == (f"--workdir {w}: {w / name} is {'a file' if kind == 'file' else 'a broken symbolic link'}, "
                            f"not the run's {name} folder; move it away or use another --workdir")
    workdir.check(tmp_path / "new")  # a new workdir passes, and is not created
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", list(workdir.WRITTEN))
def test_a_log_file_linked_out_of_the_workdir_is_refused(tmp_path, name):
    w = tmp_path / "w"
    w.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    target = outside if name == "tb" else outside / "victim"  # tb: a folder of events
    (w / name).symlink_to(target)
    with pytest.raises(cli.UsageError, match=rf"{w / name} is a symbolic link to {target}, outside the workdir"):
        workdir.check(w)
    # a link that stays inside the workdir is no escape
    (w / name).unlink()
    (w / "logs").mkdir()
    (w / name).symlink_to(Path("logs") if name == "tb" else Path("logs") / "here")
    workdir.check(w)
    assert (outside / "victim").read_text() == "keep me"


@pytest.mark.parametrize("name,option", [("train.lock", "--workdir"), ("prepare.lock", "--out")])
def test_the_lock_is_never_taken_through_a_link(tmp_path, name, option):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / name).symlink_to(victim)
    with pytest.raises(CannotLock) as e:
        RunLock(folder, name=name, option=option).acquire()
    assert str(e.value) == (f"{option} {folder}: {folder / name} is a symbolic link (to {victim}); the lock is "
                            "never taken through a link: remove it")
    assert victim.read_text() == "keep me"


# ---------------------------------------------------------------- start_logs: one run's history per log


def _records(*steps, torn=None):
    lines = [json.dumps({"step": s, "psnr": 20.0 + s}) + "\n" for s in steps]
    return "".join(lines) + (torn or "")


def test_a_fresh_start_sets_an_earlier_runs_logs_aside_under_free_names(tmp_path):
    w = tmp_path / "w"
    (w / "tb").mkdir(parents=True)
    (w / "tb" / "events.out.tfevents.1").write_bytes(b"old events")
    (w / "metrics.jsonl").write_text(_records(3, 6))
    (w / "metrics.superseded.jsonl").write_text(_records(9))
    (w / "metrics.1.jsonl").write_text("a file of the user's")  # taken: the set gets number 2
    said = []
    workdir.start_logs(w, 0, fresh=True, say=said.append)
    assert said == [f"note: {w} holds no checkpoint: this run starts from step 0 with a new metrics.jsonl and "
                    "tb/; the earlier run's logs are kept as metrics.2.jsonl, metrics.superseded.2.jsonl, tb.2/"]
    assert (w / "metrics.2.jsonl").read_text() == _records(3, 6)
    assert (w / "metrics.superseded.2.jsonl").read_text() == _records(9)
    assert (w / "tb.2" / "events.out.tfevents.1").read_bytes() == b"old events"
    assert (w / "metrics.1.jsonl").read_text() == "a file of the user's"
    assert not (w / "metrics.jsonl").exists() and not (w / "tb").exists()
    # nothing of an earlier run (an empty log, an empty tb/): nothing moved, nothing said
    (w / "metrics.jsonl").write_text("")
    (w / "tb").mkdir()
    workdir.start_logs(w, 0, fresh=True, say=said.append)
    assert len(said) == 1 and (w / "tb").is_dir() and not (w / "tb.3").exists()


def test_a_resume_moves_the_records_after_its_step_to_the_superseded_log(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    (w / "metrics.jsonl").write_text(_records(2, 3, 4, 6, torn='{"step": 7, "ps'))
    said = []
    workdir.start_logs(w, 3, fresh=False, say=said.append)
    assert said == ["note: metrics.jsonl held 2 record(s) of step(s) after 3 (4, 6), logged by weights this run "
                    "does not continue from; moved them to metrics.superseded.jsonl (those steps are trained again)"]
    # the torn line is no record: it stays where it was; the next record starts on a new line
    assert (w / "metrics.jsonl").read_text() == _records(2, 3, torn='{"step": 7, "ps')
    assert (w / "metrics.superseded.jsonl").read_text() == _records(4, 6)
    # a kill after the superseded records were appended, before the log was rewritten: on the
    # next start they are not appended twice
    (w / "metrics.jsonl").write_text(_records(2, 3, 4, 6))
    workdir.start_logs(w, 3, fresh=False, say=said.append)
    assert (w / "metrics.superseded.jsonl").read_text() == _records(4, 6)
    assert (w / "metrics.jsonl").read_text() == _records(2, 3)
    # a resume at the newest logged step: nothing moved, nothing said
    workdir.start_logs(w, 3, fresh=False, say=said.append)
    assert len(said) == 2 and (w / "metrics.jsonl").read_text() == _records(2, 3)


def test_a_log_linked_inside_the_workdir_is_rewritten_where_it_lies(tmp_path):
    w = tmp_path / "w"
    (w / "logs").mkdir(parents=True)
    (w / "logs" / "m.jsonl").write_text(_records(3, 6))
    (w / "metrics.jsonl").symlink_to(Path("logs") / "m.jsonl")
    workdir.start_logs(w, 3, fresh=False, say=lambda _: None)
    assert (w / "metrics.jsonl").is_symlink() and (w / "logs" / "m.jsonl").read_text() == _records(3)


# ---------------------------------------------------------------- Logger: strict JSON, a full disk


def test_metrics_records_are_strict_json(tmp_path):
    logger = run_log.Logger(tmp_path, 10, 0, True)
    logger.start(0, fresh=True)
    try:
        logger.eval(5, {"psnr": float("inf"), "ssim": 1.0, "bicubic_psnr": float("nan"), "bicubic_ssim": 1.0,
                        "images": 1, "protocol": 0})
    finally:
        logger.close()
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    record = _strict(line)
    assert record["step"] == 5 and record["psnr"] == "inf" and float(record["psnr"]) == float("inf")
    assert record["bicubic_psnr"] is None


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, path, room):
        self._file, self._room = open(path, "wb"), room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._file.write(data)

    def flush(self):
        self._file.flush()

    def fileno(self):
        return self._file.fileno()

    def close(self):
        self._file.close()


def test_a_full_disk_under_the_event_writer_is_one_warning_and_never_blocks(tmp_path, monkeypatch, capsys):
    """The events file fills up after 200 bytes: tensorboardX's writer thread gets no exception
    (no traceback; alive, so its queue drains: 50 more events, five times its queue, do not
    block the run), and the run says so once, in one line."""
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    monkeypatch.setattr(run_log, "open", lambda path, mode: _FullDisk(path, 200), raising=False)
    logger = run_log.Logger(tmp_path, 100, 0, True)
    logger.start(0, fresh=True)
    done = threading.Event()

    def steps():
        for step in range(1, 51):
            logger.train(step, {"loss": 1.0, "lr": 1e-4, "patches_per_s": 10.0}, 1)
        done.set()

    worker = threading.Thread(target=steps, daemon=True)
    worker.start()
    assert done.wait(30), "the run blocked on the event writer"
    logger.close()
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if "warning:" in ln]
    assert thread_errors == [] and "Traceback" not in err, err
    assert len(warnings) == 1 and warnings[0].endswith(
        f"warning: {tmp_path / 'tb'}: TensorBoard events are no longer written (no space left on device); "
        "training goes on (the checkpoints and metrics.jsonl are what a run keeps)"), err


def test_event_writer_failure_is_not_added_to_a_failing_runs_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_log, "open", lambda path, mode: _FullDisk(path, 0), raising=False)
    with pytest.raises(RuntimeError):
        with run_log.Logger(tmp_path, 10, 0, True) as logger:
            logger.start(0, fresh=True)
            raise RuntimeError("the checkpoint's own error line")
    assert "warning:" not in capsys.readouterr().err


# ---------------------------------------------------------------- the trainer, end to end


def _train(workdir_, *overrides, timeout=180):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "edsr_jax.train", f"--config={TINY}", f"--workdir={workdir_}",
           f"--config.data.cache_dir={CACHE}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _steps(path):
    return [json.loads(ln)["step"] for ln in Path(path).read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A tiny run of 6 steps, evaluated at 3 and 6, checkpoints at 3 and 6."""
    w = tmp_path_factory.mktemp("logged") / "run"
    r = _train(w, "--config.train.steps=6", "--config.train.eval_every=3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _steps(w / "metrics.jsonl") == [3, 6]
    return w


def _errors(r):
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]


@pytest.mark.slow
def test_removed_checkpoints_start_a_new_log_and_keep_the_old_one(logged_run, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(logged_run, w)
    shutil.rmtree(w / "checkpoints")
    old = (w / "metrics.jsonl").read_text()
    r = _train(w, "--config.train.steps=3", "--config.train.eval_every=3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the earlier run's logs are kept as metrics.1.jsonl, tb.1/" in r.stderr
    assert (w / "metrics.1.jsonl").read_text() == old and _steps(w / "metrics.jsonl") == [3]
    assert list((w / "tb").iterdir()) and list((w / "tb.1").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["damaged", "never committed"])
def test_steps_retrained_after_an_older_checkpoint_are_logged_once(logged_run, tmp_path, how):
    """Step 6's checkpoint is damaged (the trainer falls back to step 3), or was never committed
    (a kill between the record of step 6 and its checkpoint): the run goes on from step 3, and
    metrics.jsonl holds step 6 once, the new one; the old record is kept aside."""
    w = tmp_path / "w"
    shutil.copytree(logged_run, w)
    old6 = (w / "metrics.jsonl").read_text().splitlines()[1]
    if how == "damaged":
        for f in (w / "checkpoints" / "6" / "params").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    else:
        shutil.rmtree(w / "checkpoints" / "6")
    r = _train(w, "--config.train.steps=6", "--config.train.eval_every=3")
    assert r.returncode == 0 and "resuming from step 3" in r.stderr, r.stderr[-3000:]
    assert "note: metrics.jsonl held 1 record(s) of step(s) after 3 (6)" in r.stderr
    assert _steps(w / "metrics.jsonl") == [3, 6]
    assert (w / "metrics.superseded.jsonl").read_text().splitlines() == [old6]
    assert (w / "metrics.jsonl").read_text().splitlines()[1] != old6


@pytest.mark.slow
def test_refusals_before_anything_is_written(logged_run, tmp_path):
    """One ``error:`` line, exit 2, and the workdir as it was, for: ``checkpoints`` a file, a
    metrics.jsonl linked out of the workdir (the file it points to untouched), init_from a run
    with no readable step, init_from a file."""
    victim = tmp_path / "victim.jsonl"
    victim.write_text("someone else's log\n")
    unreadable = tmp_path / "unreadable"
    shutil.copytree(logged_run, unreadable)
    for step in ("3", "6"):
        shutil.rmtree(unreadable / "checkpoints" / step / "params")
    cases = {
        "checkpoints a file": (lambda w: (w.mkdir(), (w / "checkpoints").write_text("x")), [],
                               "checkpoints is a file, not the run's checkpoints folder"),
        "metrics.jsonl linked out": (lambda w: (w.mkdir(), (w / "metrics.jsonl").symlink_to(victim)), [],
                                     f"metrics.jsonl is a symbolic link to {victim}, outside the workdir"),
        "init_from unreadable": (lambda w: None, [f"--config.train.init_from={unreadable}"],
                                 f"config.train.init_from: {unreadable / 'checkpoints'}: no checkpoint step reads "
                                 "completely (step "),
        "init_from a file": (lambda w: None, [f"--config.train.init_from={victim}"],
                             f"config.train.init_from: {victim}: is a file, not a checkpoint or workdir"),
    }
    for what, (make, overrides, message) in cases.items():
        w = tmp_path / what.replace(" ", "_")
        make(w)
        before = _tree(w)
        r = _train(w, "--config.train.steps=3", *overrides)
        errors = _errors(r)
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, (what, r.stderr[-3000:])
        assert message in errors[0], (what, errors)
        assert _tree(w) == before, what
    assert victim.read_text() == "someone else's log\n"


@pytest.mark.slow
def test_a_full_disk_under_events_and_the_first_checkpoint_is_one_warning_and_one_error(tmp_path):
    """On a 400 KiB tmpfs, evaluated every 2 steps (TensorBoard panels) with no checkpoint until
    the last step: the events fill the disk (one ``warning:`` line, training goes on), then the
    only checkpoint cannot be written (one ``error:`` line, exit 2); no traceback from the
    writer thread nor from closing the checkpoint manager, no warnings of Orbax's at exit."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        w = mnt / "w"
        r = _train(w, "--config.train.steps=30", "--config.train.checkpoint_every=1000",
                   "--config.train.eval_every=2")
        said = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.startswith(("error:", "warning:"))]
        assert r.returncode == 2 and "Traceback" not in r.stderr and "RuntimeWarning" not in r.stderr, r.stderr[-3000:]
        assert said == [
            f"warning: {w / 'tb'}: TensorBoard events are no longer written (no space left on device); training "
            "goes on (the checkpoints and metrics.jsonl are what a run keeps)",
            f"error: {w / 'checkpoints'}: could not write a checkpoint (no space left on device); the newest "
            "complete one is none (an unfinished save is never resumed from)"], r.stderr[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


WORKDIR_EVENTS = [  # rows of docs/bad_inputs.md's round-three table, each tested above or in test_reliability
    "`train` again after `rm -rf RUN/checkpoints` (a fresh start in a workdir holding an earlier run's logs)",
    "a resume from a step older than the last logged one (a fallback from a damaged newest step; a kill between "
    "a record and its checkpoint)",
    "`RUN/checkpoints` or `RUN/tb` that is a file (or a broken link)",
    "a file the run writes (`metrics.jsonl`, `metrics.superseded.jsonl`, `tb`, `train.lock`) that is a symbolic "
    "link leading out of the workdir; a lock file (`train.lock`, `prepare.lock`) that is any link",
    "`train.init_from` naming a run with no readable step, or a file",
    "a full disk under TensorBoard's event writer in `train`",
    "a `metrics.jsonl` record with an infinite PSNR or a NaN",
    "`posters`, the StableHLO runner: a file created by another process after this one checked",
]


def test_documented_workdir_rows_match_the_tests():
    assert_documented_rows(WORKDIR_EVENTS)
