"""benchmarks/gpu_check.sh end to end in its CPU dry mode (tiny sizes, few steps, gloo; about a minute)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bc") is None, reason="gpu_check.sh times its stages with bc")
def test_gpu_check_dry_mode_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check_cpu.json"
    env = {**os.environ, "MMBENCH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--work",
                           str(tmp_path / "work"), "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["device"] == "cpu"
    assert result["parameters"]["total"] > 0 and result["matmul_ceiling"]["tflops"] > 0
    for run in ("train_single", "train_torchrun"):
        assert result[run]["status"] == "done" and result[run]["final_step"] == 40
        assert 0 < result[run]["mfu"] < 1 and result[run]["tokens_per_s"] > 0
    assert result["torchrun_same_weights_as_single"]  # 1-process DDP (gloo) trains the same weights on CPU
    resume = result["resume"]
    assert resume["killed_after_step"] >= 10  # SIGKILL landed while training ran, after a checkpoint
    assert resume["run"]["status"] == "done" and resume["bit_identical"] and resume["within_tolerance"]
    assert resume["weights_diff_vs_uninterrupted"] == {"max_abs": 0.0, "max_rel": 0.0}
    assert set(result["eval"]) == {"synthetic-vqa", "synthetic-caption"}
    assert all(set(cells) == {"0", "4", "8"} for cells in result["eval"].values())
    assert {"train_single", "train_torchrun", "eval", "kill_and_resume", "scale_cell", "train_fsdp",
            "fsdp_kill_and_resume", "stage_align", "stage_full"} <= set(result["timings_s"])
    fsdp = result["fsdp"]  # 2 gloo ranks: trained, estimated, killed after a checkpoint and re-run to the same bits
    assert fsdp["ranks"] == 2 and fsdp["run"]["status"] == "done" and fsdp["run"]["final_step"] == 40
    assert fsdp["estimate_bytes"] > 0 and fsdp["measured_peak_bytes"] is None  # peak memory is read on CUDA only
    assert fsdp["resume"]["killed_after_step"] >= 10 and fsdp["resume"]["bit_identical"]
    stages = result["two_stage"]
    assert stages["starts_at_align_weights"] and stages["full"]["status"] == "done"
    assert stages["full"]["init_from"]["step"] == stages["align"]["final_step"] == 10
    scale = result["scale_cell"]  # the scaled recipe's grid file ran one (shrunk) cell, reported against its priors
    assert scale["cell"] == "resolution=28,tokens=4" and scale["step"] == 4
    vqa = scale["tasks"]["synthetic-vqa"]
    assert vqa["minus_prior"] == round(vqa["value"] - vqa["prior"], 3) and "synthetic-ocr" in scale["tasks"]
