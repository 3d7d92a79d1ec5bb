"""The README's commands work from a fresh clone with nothing beside it: the fresh-clone block
runs as written (a tiny model stands in for the quickstart's, trained in step 1), and the spec
grammar in the README, `prepare --help` and `evaluate --help` is the one text, which names every
operator and whose examples parse."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT

README = ROOT / "README.md"


def fresh_clone_commands() -> list[list[str]]:
    block = README.read_text().split("<!-- fresh-clone -->")[1].split("<!-- /fresh-clone -->")[0]
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()
                and not line.startswith("```")]
    assert commands and all(c[:2] == ["python", "-m"] for c in commands), commands
    return [[sys.executable] + c[1:] for c in commands]


def test_every_python_command_follows_the_one_convention():
    """The top says once that every command runs in the activated .venv, as `python` and `pip`:
    so every `python -m` in the README is a bare `python` (the venv is made with `python3 -m
    venv`), and `.venv/bin/` appears only as the activate script."""
    text = README.read_text()
    top = text.split("\n## ")[0]
    assert "activate it first with `. .venv/bin/activate`" in top
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install" in top
    uses = re.findall(r"(\S*)\s+-m\s+(\S+)", text)
    calls = [(word, module) for word, module in uses if "python" in word]
    assert len(calls) > 40, len(calls)
    wrong = [(w, m) for w, m in calls if w.lstrip("`(") != "python" and (w, m) != ("python3", "venv")]
    assert not wrong, wrong
    assert re.findall(r"\.venv/bin/\w+", text) == [".venv/bin/activate"] * text.count(".venv/bin/")
    assert "../shared" not in top


def test_fresh_clone_block_names_nothing_outside_the_clone():
    for command in fresh_clone_commands():
        assert not any(".." in arg or arg.startswith("/") for arg in command[1:]), command


@pytest.mark.slow
def test_fresh_clone_block_runs_as_written(tmp_path):
    from edsr_jax.training import checkpoint
    from edsr_jax.nets.edsr import ModelConfig

    config = ModelConfig(scale=2, num_blocks=2, num_features=8)
    checkpoint.save_params_checkpoint(tmp_path / "runs" / "quickstart", config,
                                      config.build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    for command in fresh_clone_commands():
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    assert len(list((tmp_path / "samples" / "val").iterdir())) == 2
    assert sorted(p.name for p in (tmp_path / "upscaled" / "quickstart").iterdir()) == ["chelsea.png", "coffee.png"]
    assert [p.name for p in (tmp_path / "upscaled" / "auto").iterdir()] == ["coffee.png"]  # the built-in model
    assert (tmp_path / "runs" / "quickstart_scores.json").is_file() and (tmp_path / "runs" / "quickstart.shlo").is_file()
    assert (tmp_path / "data" / "poster" / "manifest.json").is_file()
    # everything it wrote is covered by the project's .gitignore: a clone's git status stays clean
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    assert [line for line in status if line and line != "?? .gitignore"] == []
    # Then every block marked runnable, in order, in the same folder, as a reader pastes it.
    blocks = runnable_blocks()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for lang, code in blocks:
        command = ([sys.executable, "-c", code] if lang == "python"
                   else ["bash", "-euo", "pipefail", "-c", code])
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (code, proc.stderr[-2000:])


def runnable_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block the README marks ``<!-- runnable -->``."""
    found = re.findall(r"<!-- runnable -->\n```(python|bash)\n(.*?)```", README.read_text(), flags=re.S)
    return [(lang, code) for lang, code in found]


def test_runnable_blocks_are_found_and_use_the_public_api():
    blocks = runnable_blocks()
    assert any(lang == "python" for lang, _ in blocks)
    research = next(code for lang, code in blocks if lang == "python" and "import edsr_jax\n" in code)
    for name in ("preset", "apply", "Upscaler", "restore_for_inference", "degrade_batch"):
        assert f"edsr_jax.{name}" in research, name


def test_spec_grammar_is_one_text_naming_every_operator():
    from edsr_jax import evaluate, prepare
    from edsr_jax.degradation import degrade

    for op in degrade.OPS:
        assert f"{op}(" in degrade.SPEC_HELP, op
    examples = re.findall(r'"([^"]+)"', degrade.SPEC_HELP)
    assert len(examples) >= 3
    for example in examples:
        degrade.parse(example, scale=2)
    for module in (prepare, evaluate):
        assert degrade.SPEC_HELP in module.build_parser().format_help(), module.__name__
    assert degrade.SPEC_HELP in README.read_text()
