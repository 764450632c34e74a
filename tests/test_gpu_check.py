"""bench/gpu_check.py end to end on the CPU (``--device cpu --quick``): the same steps as on
the GPU machine, at toy sizes, against a bundle staged offline from this checkout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_lib.testing import load_script

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("detectron2")


def _offline_bundle(folder: Path) -> Path:
    """build_dataset.py's layout (``kernel_lib_bootstrap.py``, ``wheels/``) with the two wheels the install cell needs
    that this venv lacks once detectron2 and kernel_lib are hidden: the repacked
    detectron2 (scripts/setup_env.sh leaves it in wheels/) and kernel_lib, built here."""
    detectron2 = sorted((ROOT / "wheels").glob("sal_detectron2-*.whl"))
    if not detectron2:
        pytest.skip("wheels/sal_detectron2-*.whl not built: run scripts/setup_env.sh")
    build_dataset = load_script(ROOT / "build_dataset.py", "build_dataset")
    wheels = folder / "wheels"
    wheels.mkdir(parents=True)
    shutil.copy2(detectron2[0], wheels)
    shutil.copy2(build_dataset.build_kernel_lib(ROOT, folder / "cache"), wheels)
    build_dataset.stage_bootstrap(folder)  # kernel_lib_bootstrap.py: what the install cell runs
    return folder


@pytest.mark.slow
def test_gpu_check_quick_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    bundle = _offline_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "bench/gpu_check.py",
        "--device",
        "cpu",
        "--quick",
        "--bundle",
        str(bundle),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    results = json.loads((out / "gpu_check.json").read_text())
    steps = results["steps"]
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(
        ("install", "cuda_tests", "bench_inference", "memory", "train"), "ok"
    ), (proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    # the notebook's cell installed both wheels into a venv that lacked them
    install = steps["install"]
    assert install["fresh_venv"] is True and "installed detectron2, kernel_lib" in install["cell_printed"]
    assert not install["kernel_lib"].startswith(str(ROOT)) and not install["detectron2"].startswith(str(ROOT))
    assert steps["cuda_tests"]["files"]  # the gpu-marked tests ran (skipped without CUDA)
    bench = steps["bench_inference"]
    assert bench["images"] == 1 and bench["folds"] == 1 and "speedup_bundle" in bench
    assert bench["models"].endswith("models/r50-narrow") and bench["config"].endswith("best_config.json")
    assert bench["method"] == "wmf" and bench["data"].endswith("tests/data")  # the shipped folds and pipeline
    memory = steps["memory"]
    assert [(row["batch_size"], row["images"]) for row in memory["rows"]] == [(1, 1), (2, 2)]
    assert memory["folds"] == ["fold0"] and memory["method"] == "wmf"
    (fold,) = steps["train"]["folds"]
    assert fold["meta"]["fold"] == 0 and "WIDTH_PER_GROUP: 16" in fold["config_yaml"]  # R50-narrow
    weights = out / fold["weights_file"]
    assert weights.is_file() and weights.stat().st_size <= 12 * 2**20
    assert (out / "gpu_check.log").is_file()
    assert len(list(out.iterdir())) <= 8  # what comes back from the GPU machine


def test_every_torch_cuda_name_in_the_library_and_benches_exists() -> None:
    """A misspelt torch.cuda function (gpu_check called torch.cuda.reset_peak_stats, which does
    not exist) only fails on a GPU machine, where time is scarce: check every name here."""
    torch = pytest.importorskip("torch")
    names: dict[str, list[str]] = {}
    for folder in ("kernel_lib", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for match in re.finditer(r"\btorch\.cuda\.([A-Za-z_]\w*)", path.read_text()):
                names.setdefault(match.group(1), []).append(str(path.relative_to(ROOT)))
    assert "is_available" in names  # the scan found the library's uses
    missing = {name: files for name, files in names.items() if not hasattr(torch.cuda, name)}
    assert not missing, f"not in torch.cuda (torch {torch.__version__}): {missing}"
