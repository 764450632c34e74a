"""bench/gpu_check.py end to end on the CPU (``--dry-run``: the upload measured, then
``--device cpu --quick`` in a copy of what the device call uploads, ../shared hidden): the
same steps as on the GPU machine, at toy sizes, against a bundle staged offline from this
checkout."""

from __future__ import annotations

import json
import os
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
def test_gpu_check_dry_run_walks_every_step_with_shared_hidden(tmp_path: Path) -> None:
    """``bash bench/gpu_check.sh --dry-run``: the upload (tree + bundle + carried pack)
    measured against the device's 64 MiB, then every step at toy sizes (``--quick``) in a
    copy of exactly what the device call uploads, with no ../shared beside it."""
    gpu_check = load_script(ROOT / "bench" / "gpu_check.py", "gpu_check")
    bundle = _offline_bundle(tmp_path / "bundle")
    pack = tmp_path / "pack"
    source = ROOT.parent / "shared" / "data" / "sartorius-mini"
    if (source / "train.csv").is_file():
        staged = gpu_check.stage_data(source, pack)
        assert staged["images"] == gpu_check.STAGE_IMAGES and len(staged["cell_types"]) == 3
    else:  # tests/data's 7 annotated images stand in for the pack
        pack.mkdir()
        shutil.copy2(ROOT / "tests" / "data" / "train.csv", pack)
        shutil.copytree(ROOT / "tests" / "data" / "train", pack / "train")
    out = tmp_path / "out"
    cmd = ["bash", "bench/gpu_check.sh", "--dry-run", "--bundle", str(bundle), "--data", str(pack), "--out", str(out),
           "--deadline", "840"]  # fmt: skip
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    results = json.loads((out / "gpu_check.json").read_text())
    steps = results["steps"]
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(
        ("install", "cuda_tests", "bench_inference", "t4_like", "memory", "train"), "ok"
    ), (proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    upload = results["upload"]
    assert upload["total_bytes"] <= gpu_check.DEVICE_UPLOAD_BYTES - gpu_check.UPLOAD_ROOM_BYTES
    assert upload["tree_bytes"] == sum((ROOT / f).lstat().st_size for f in gpu_check.tree_files())
    assert set(upload["carries_bytes"]) == {gpu_check.CARRY_BUNDLE, gpu_check.CARRY_DATA}
    # the notebook's cell installed both wheels into a venv that lacked them
    install = steps["install"]
    assert install["fresh_venv"] is True and "installed detectron2, kernel_lib" in install["cell_printed"]
    assert not install["kernel_lib"].startswith(str(ROOT))
    assert not install["detectron2"].startswith(str(ROOT))
    assert steps["cuda_tests"]["files"]  # the gpu-marked tests ran (skipped without CUDA)
    for name in ("bench_inference", "t4_like"):
        bench = steps[name]
        assert bench["images"] == 1 and bench["folds"] == 1 and "bundle" in bench and "bundle_fp32" in bench
        assert bench["models"].endswith("models/r50-narrow") and bench["config"].endswith("best_config.json")
        assert bench["method"] == "wmf" and bench["data"].endswith(gpu_check.CARRY_DATA)  # the carried pack
        assert "gpu_check_device_" in bench["data"]  # in the copy the device gets, not ../shared
    assert "speedup_bundle" in steps["bench_inference"] and "speedup_bundle" not in steps["t4_like"]
    assert steps["t4_like"]["t4_like"]["threads"] == 4 and steps["t4_like"]["t4_like"]["tf32"] is False
    memory = steps["memory"]
    assert [(row["batch_size"], row["images"], row["splits"]) for row in memory["rows"]] == [(1, 1, []), (2, 2, [])]
    assert memory["folds"] == ["fold0"] and memory["method"] == "wmf"
    (fold,) = steps["train"]["folds"]
    assert fold["meta"]["fold"] == 0 and "WIDTH_PER_GROUP: 16" in fold["config_yaml"]  # R50-narrow
    weights = out / fold["weights_file"]
    assert weights.is_file() and weights.stat().st_size <= 12 * 2**20
    assert (out / "gpu_check.log").is_file()
    assert len(list(out.iterdir())) <= 8  # what comes back from the GPU machine


def test_the_upload_is_measured_and_refused_past_the_limit(tmp_path: Path) -> None:
    gpu_check = load_script(ROOT / "bench" / "gpu_check.py", "gpu_check")
    bundle, pack = tmp_path / "bundle", tmp_path / "pack"
    bundle.mkdir()
    (bundle / "w.whl").write_bytes(b"x" * 1000)
    pack.mkdir()
    (pack / "train.csv").write_bytes(b"y" * 500)
    sizes = gpu_check.upload_size(bundle, pack)
    assert sizes["carries_bytes"] == {gpu_check.CARRY_BUNDLE: 1000, gpu_check.CARRY_DATA: 500}
    assert sizes["total_bytes"] == sizes["tree_bytes"] + 1500 and 20 * 2**20 < sizes["tree_bytes"] < 40 * 2**20
    with open(pack / "big.png", "wb") as fh:  # sparse: takes no disk
        fh.truncate(gpu_check.DEVICE_UPLOAD_BYTES - sizes["tree_bytes"])
    with pytest.raises(ValueError, match=r"come to .* MiB; expected at most 60 MiB \(the device's 64 MiB"):
        gpu_check.upload_size(bundle, pack)


def test_stage_data_refuses_a_folder_without_a_pack(tmp_path: Path) -> None:
    gpu_check = load_script(ROOT / "bench" / "gpu_check.py", "gpu_check")
    with pytest.raises(ValueError, match=r"expected an annotated pack \(train.csv, train/\), got none"):
        gpu_check.stage_data(tmp_path, tmp_path / "out")


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
