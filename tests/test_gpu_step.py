"""``benchmarks/gpu_step.py`` and ``run_all.py --device gpu`` (the measured GPU table), checked
where no GPU is: argument handling, the clear refusal, the trace reading and the table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_step  # noqa: E402
import run_all  # noqa: E402


def test_gpu_step_refuses_clearly_without_a_gpu(capsys):
    assert gpu_step.main(["--cases", "edsr_baseline:bfloat16:8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: benchmarks/gpu_step.py needs an NVIDIA GPU; JAX's backend here is cpu")


@pytest.mark.parametrize("case", ["edsr_baseline:bfloat16", "edsr_big:bfloat16:64", "edsr:float16:4",
                                  "edsr:float32:0", "edsr:float32:x"])
def test_gpu_step_names_a_bad_case(case):
    with pytest.raises(SystemExit, match=f"error: --cases '{case}': expected PRESET:DTYPE:BATCH"):
        gpu_step.main(["--cases", case])


def test_gpu_step_parses_cases_and_names_devices():
    assert gpu_step.parse_case("edsr:float32:16") == ("edsr", "float32", 16)
    assert gpu_step.device_target("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_step.device_target("NVIDIA H200") == "h200"
    assert gpu_step.device_target("NVIDIA A100-SXM4-80GB") is None


def _meta(pid, name, tid=None):
    event = {"ph": "M", "pid": pid, "name": "thread_name" if tid is not None else "process_name",
             "args": {"name": name}}
    return {**event, "tid": tid} if tid is not None else event


def test_traced_kernels_counts_the_gpu_streams_kernels_only():
    events = [_meta(1, "/host:CPU"), _meta(1, "python", tid=10),
              _meta(2, "/device:GPU:0"), _meta(2, "Stream #7(Compute)", tid=20),
              _meta(2, "XLA Ops", tid=21), _meta(2, "Stream #9(MemcpyD2D)", tid=22),
              *[{"ph": "X", "pid": 2, "tid": 20, "name": f"loop_fusion_{i}"} for i in range(5)],
              {"ph": "X", "pid": 2, "tid": 22, "name": "cutlass_kernel"},
              {"ph": "X", "pid": 2, "tid": 22, "name": "MemcpyD2D"},
              {"ph": "X", "pid": 2, "tid": 21, "name": "fusion.3"},  # an XLA op, not a launch
              {"ph": "X", "pid": 1, "tid": 10, "name": "PjitFunction(step)"}]
    assert gpu_step.traced_kernels(events) == 6
    assert gpu_step.traced_kernels(events[:2]) is None  # a CPU trace: nothing to count


def test_gpu_step_table_with_and_without_an_estimate():
    row = {"preset": "edsr_baseline", "dtype": "bfloat16", "batch": 64, "kernels": 258, "traced": 251.0,
           "measured_s": 3.0e-3, "est_s": 2.83e-3, "est_no_launch_s": 2.31e-3, "mfu": 0.41, "est_mfu": 0.43}
    other = {"preset": "edsr", "dtype": "float32", "batch": 16, "kernels": 700, "traced": None,
             "measured_s": 0.03}
    lines = gpu_step.table([row, other]).splitlines()
    assert lines[2] == ("| edsr_baseline x2 | bfloat16 | 64 | 258 | 251 | 3.00 | 2.83 (2.31) | 1.06 | "
                        "41 % | 43 % |")
    assert lines[3] == "| edsr x2 | float32 | 16 | 700 | - | 30.00 | - | - | - | - |"


def test_run_all_device_gpu_runs_the_measured_table_first_and_refuses_without_a_gpu(tmp_path):
    assert list(run_all.GPU_BENCHMARKS)[0] == "gpu_step"
    for name, (script, _, _) in run_all.GPU_BENCHMARKS.items():
        assert name in run_all.TITLES
        assert script.startswith("-m") or (ROOT / "benchmarks" / script).is_file()
    out = tmp_path / "B.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--device", "gpu",
                        "--out", str(out)], capture_output=True, text=True, timeout=120,
                       env={**run_all._env("cpu"), "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2 and r.stderr.startswith("error: --device gpu, but JAX's backend here is cpu")
    assert not out.exists()
