"""bench/gpu_check.py, the first GPU session's script, checked on the CPU for its logic: every section runs
(here on CPU tensors through the device path, at tiny sizes), writes its results, and the device path agrees
with the CPU path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    sections = "throughput,stack_auto,resnet18,agreement,distances"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--methods", "biprop", "--sections", sections, "--budget", "900", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and list(results["sections"]) == sections.split(",")
    sections_run = results["sections"]
    assert not [name for name, r in sections_run.items() if "error" in r or "skipped" in r], sections_run
    stacks = sections_run["throughput"]["biprop"]
    assert sorted(stacks) == ["1", "2", "4"] and stacks["1"]["vs_sequential"] == 1.0
    assert all(r["per_mask_img_s"] > 0 and r["img_s"] > 0 for r in stacks.values())
    assert sections_run["stack_auto"]["auto"] == 1 and sections_run["stack_auto"]["best_measured"] in (1, 2, 4)
    assert sorted(sections_run["resnet18"]) == ["1", "2", "seconds"]
    agreement = sections_run["agreement"]
    assert all(0.99 <= a <= 1 for a in agreement["cpu_vs_device"] + agreement["stacked_vs_alone_on_device"])
    assert sections_run["distances"]["equal"] is True


def test_the_gpu_check_plan_fits_its_budget():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, check=True)
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["cuda_tests", "throughput", "stack_auto", "resnet18",
                                                            "agreement", "distances"]
    assert "of a 480 s budget" in lines[-1]
