"""The prepared GPU check (issue 14): one command, from a checkout, within a deadline.

Steps, each timed and recorded in ``$OUT/gpu_check.json`` (a failed step is recorded and
the next one still runs):

1. ``install``: the bundle staged by ``build_dataset.py`` (``--bundle``, default
   ``build/kaggle-dataset``) is put where Kaggle mounts it (``<work>/input/<name>/``)
   and the inference notebook's own install cell (read from
   ``notebooks/sartorius-inference.ipynb``) runs with ``KAGGLE_INPUT`` pointing there:
   ``pip install --no-index --find-links wheels`` into the interpreter's preinstalled
   torch. Then the installed detectron2 and kernel_lib are imported from outside the
   checkout. When the interpreter already has detectron2 or kernel_lib (this
   development venv), a throw-away venv sees its packages except those two, so the
   cell really installs.
2. ``cuda_tests``: the tests marked ``gpu`` (they skip without CUDA).
3. ``bench_inference``: ``bench/bench_inference.py`` on the shipped folds
   (``--models``, default ``models/r50-narrow``, with their ``best_config.json``: WMF,
   identity + hflip) and 40 images of ``--data`` (the bundle in fp16 and in float32,
   ``--fp32``, vs the public DefaultPredictor loop); the step fails unless all 40 (and
   the 5 folds) ran.
4. ``t4_like``: the same on 20 images as a T4 would run it (``--t4-like``: 4 CPU threads,
   TF32 off, GPU memory capped at 14.5 GiB), fp16 and float32, no baseline.
5. ``memory``: peak GPU memory of ``run_inference`` (the same folds and config, fp16) per
   batch size on images of ``--data`` (each batch size gets that many images, checked),
   and the largest batch size whose peak fits a 16 GB T4 (``T4_BUDGET_GIB``) without
   an out-of-memory split (``kernel_lib.model`` splits such a batch and says so).
6. ``train``: ``python -m kernel_lib train --arch R50-narrow`` (from scratch, the shipped
   folds' recipe: crops of 256, per-image normalisation; 200 iterations at batch 8) fold
   after fold while the next one is projected to fit before the deadline; each fold's
   ``model_final.pth`` (<= 12 MiB) is copied to ``$OUT/fold<K>_model_final.pth`` and its
   config.yaml and meta.json go into the results JSON.

``--stage-data PACK`` writes the pack the device call carries (``build/gpu_data/
sartorius-mini``: 64 annotated images); ``--dry-run`` measures the upload (tree + carries
<= 60 MiB of the device's 64) and runs ``--quick`` in a copy of exactly that, with no
``../shared`` beside it. ``--device cpu --quick`` runs the same steps at toy sizes (1 image and the first shipped
fold, identity view; 2 training iterations) so that a CPU test covers the whole script. At most 8 files come back from
the GPU machine: the results JSON, the log and up to 6 fold weights.

Usage::

    bash bench/gpu_check.sh --device cuda [--bundle build/kaggle-dataset] [--data build/gpu_data/sartorius-mini]
        [--models models/r50-narrow]
    .venv/bin/python bench/gpu_check.py --device cpu --quick --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sartorius-inference.ipynb"
SHIPPED = ROOT / "models" / "r50-narrow"
"""The fold models the check times (with their best_config.json) unless --models says otherwise."""
BENCH_IMAGES = 40
T4_IMAGES = 20
MEMORY_BATCHES = (1, 2, 4, 8, 16)
BUNDLE_NAME = "sartorius-offline-bundle"
HIDDEN = ("detectron2", "sal_detectron2", "kernel_lib", "__editable__")
"""site-packages entries the throw-away venv does not see (what the install cell installs)."""
T4_BUDGET_GIB = 14.5
"""Peak reserved GPU memory that fits a 16 GB T4 (15.1 GiB usable, minus CUDA context)."""
MAX_WEIGHT_BYTES = 12 * 2**20
MAX_FOLD_FILES = 6
TRAIN_ITERS = 200
"""Iterations per fold of the train step (the shipped recipe took 3,000 at batch 4)."""
DEADLINE_S = 270.0
"""The check's default length: with the machine's start (minutes) and a 330 s call limit,
a second run still fits the 15 minutes of device time a session has."""
RESERVE_S = 20.0
"""Seconds kept free before the deadline for writing the results."""


@dataclass
class Check:
    """The run's settings and what it found so far."""

    device: str
    quick: bool
    work: Path
    out: Path
    bundle: Path
    data: Path
    deadline: float
    models: Path = SHIPPED
    python: str = sys.executable
    results: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        with open(self.out / "gpu_check.log", "a") as fh:
            fh.write(line + "\n")

    def run(self, name: str, cmd: list[str], cwd: Path = ROOT, timeout: float | None = None, **env: str) -> str:
        """Run a command (output to the log); ValueError when it fails or overruns."""
        limit = max(5.0, min(timeout or self.left(), self.left()))
        self.log(f"{name}: {' '.join(cmd)} (limit {limit:.0f} s)")
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=limit
            )
        except subprocess.TimeoutExpired as err:
            raise ValueError(f"{name}: over its {limit:.0f} s limit") from err
        with open(self.out / "gpu_check.log", "a") as fh:
            fh.write(proc.stdout[-20000:] + proc.stderr[-20000:])
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ValueError(f"{name}: exit {proc.returncode}: {' | '.join(tail)}")
        return proc.stdout


# ------------------------------------------------------------------------ steps


def install(check: Check) -> dict[str, Any]:
    """The notebook's install cell against the staged bundle, then imports from outside the checkout."""
    for pattern in ("kernel_lib_bootstrap.py", "wheels/sal_detectron2-*.whl", "wheels/kernel_lib-*.whl"):
        if not list(check.bundle.glob(pattern)):
            raise ValueError(
                f"install: no {pattern} in {check.bundle}; run `.venv/bin/python build_dataset.py` first "
                "(and carry build/kaggle-dataset to the GPU machine)"
            )
    kaggle_input = check.work / "input"
    kaggle_input.mkdir(parents=True, exist_ok=True)
    (kaggle_input / BUNDLE_NAME).symlink_to(check.bundle.resolve(), target_is_directory=True)
    probe = "import importlib.util as u; print(any(u.find_spec(n) for n in ('detectron2', 'kernel_lib')))"
    present = check.run("install probe", [check.python, "-c", probe], cwd=check.work).strip() == "True"
    if present:
        check.python = str(_venv_without_bundle(check))
    cell = _install_cell()
    (check.work / "install_cell.py").write_text(cell)
    printed = check.run(
        "install cell", [check.python, "install_cell.py"], cwd=check.work, KAGGLE_INPUT=str(kaggle_input)
    )
    code = (
        "import json, detectron2, kernel_lib, torch\n"
        "print(json.dumps({'detectron2': detectron2.__file__, 'kernel_lib': kernel_lib.__file__,"
        " 'torch': torch.__version__, 'cuda': torch.cuda.is_available(),"
        " 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"
    )
    found = json.loads(check.run("install import", [check.python, "-c", code], cwd=check.work).strip().splitlines()[-1])
    if str(ROOT) in found["kernel_lib"]:
        raise ValueError(f"install: kernel_lib came from the checkout ({found['kernel_lib']}), not the bundle")
    return {"python": check.python, "fresh_venv": present, "cell_printed": printed.strip(), **found}


def _install_cell() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "--no-index" in source:
            return source
    raise ValueError(f"install: {NOTEBOOK} has no code cell with `pip install --no-index`")


def _venv_without_bundle(check: Check) -> Path:
    """A venv seeing this interpreter's site-packages except detectron2 and kernel_lib."""
    env = check.work / "venv"
    venv.create(env, with_pip=False, symlinks=True)
    python = env / "bin" / "python"
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(subprocess.check_output([str(python), "-c", query], text=True).strip())
    shadow = check.work / "site-shadow"
    shadow.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(HIDDEN) and entry.suffix != ".pth":
            (shadow / entry.name).symlink_to(entry)
    (purelib / "_shadow.pth").write_text(f"{shadow}\n")
    return python


def cuda_tests(check: Check) -> dict[str, Any]:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    cmd = [check.python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    out = check.run("cuda tests", cmd, timeout=240)
    return {"files": files, "summary": out.strip().splitlines()[-1] if out.strip() else ""}


def _pipeline_args(check: Check) -> list[str]:
    """The models, their config (best_config.json beside them, when there) and the images."""
    args = ["--models", str(check.models), "--data", str(check.data)]
    if (check.models / "best_config.json").is_file():
        args += ["--config", str(check.models / "best_config.json")]
    return args


def _bench(check: Check, name: str, images: int, options: list[str], share: float) -> dict[str, Any]:
    """bench/bench_inference.py on the shipped folds (all 5; the first with --quick) and
    ``images`` images of --data, with a float32 row (``--fp32``) beside the default fp16."""
    target = check.work / f"{name}.json"
    images, folds = (1, 1) if check.quick else (images, 5)
    sizes = ["--images", str(images), "--folds", str(folds)] + (["--tta", "identity"] if check.quick else [])
    cmd = [check.python, "bench/bench_inference.py", "--device", check.device, *_pipeline_args(check), *sizes,
           "--fp32", *options, "--json", str(target)]  # fmt: skip
    check.run(name, cmd, timeout=check.left() * (0.9 if check.quick else share))
    found = json.loads(target.read_text())
    if found.get("images") != images or found.get("folds") != folds:
        raise ValueError(
            f"{name}: ran {found.get('images')} images x {found.get('folds')} folds, asked for "
            f"{images} x {folds} (--data {check.data})"
        )
    if "bundle_fp32" not in found:
        raise ValueError(f"{name}: expected a bundle_fp32 row (--fp32), got {sorted(found)}")
    return found


def bench_inference(check: Check) -> dict[str, Any]:
    """The shipped pipeline in fp16 and in float32 against the public DefaultPredictor loop."""
    return _bench(check, "bench_inference", BENCH_IMAGES, [], 0.35)


def t4_like(check: Check) -> dict[str, Any]:
    """The same on fewer images as a T4 would run it: 4 CPU threads, TF32 off, GPU
    memory capped at 14.5 GiB (bench_inference.py --t4-like); no baseline."""
    found = _bench(check, "t4_like", T4_IMAGES, ["--t4-like", "--skip-baseline"], 0.3)
    if not found.get("t4_like"):
        raise ValueError(f"t4_like: expected the T4-like settings in the report, got {found.get('t4_like')!r}")
    return found


def memory(check: Check) -> dict[str, Any]:
    cmd = [check.python, str(Path(__file__)), "--probe-memory", "--device", check.device, "--work", str(check.work),
           *_pipeline_args(check)]  # fmt: skip
    if check.quick:
        cmd.append("--quick")
    out = check.run("memory", cmd, timeout=check.left() * (0.9 if check.quick else 0.3))
    return json.loads(out.strip().splitlines()[-1])


def probe_memory(device: str, quick: bool, work: Path, models: Path, data: Path, config: Path | None) -> dict[str, Any]:
    """Peak GPU memory of run_inference per batch size (its own process: clean counters):
    the first fold (``quick``) or all of ``models`` with ``config``, on images of ``data``.

    Raises:
        ValueError: ``data`` holds fewer images than the largest batch, or a run predicted
            another number of images than its batch.
    """
    sys.path.insert(0, str(ROOT))
    import torch

    from kernel_lib.config import InferenceConfig, load_config
    from kernel_lib.images import list_images
    from kernel_lib.model_folder import read_manifest, write_manifest
    from kernel_lib.pipeline import run_inference

    cfg = load_config(config)
    listed = read_manifest(models)
    sizes = (1, 2) if quick else MEMORY_BATCHES
    if quick:
        cfg = cfg.replace(ensemble=replace(cfg.ensemble, tta=("identity",)))
        first = work / "memory_models"
        first.mkdir()
        (first / listed[0][0]).symlink_to((models / listed[0][0]).resolve(), target_is_directory=True)
        write_manifest(first, listed[:1])
        models, listed = first, listed[:1]
    folder = data / "train" if (data / "train").is_dir() else data
    images = list_images(folder)
    if len(images) < max(sizes):
        raise ValueError(f"memory: {folder} holds {len(images)} images, the largest batch needs {max(sizes)}")
    cuda = device == "cuda"
    rows = []
    for batch in sizes:
        test = work / f"memory_test_{batch}"
        test.mkdir()
        for path in images[:batch]:
            (test / path.name).symlink_to(path.resolve())
        inference = InferenceConfig(device=device, half=True, batch_size=batch, num_workers=2)
        run_cfg = cfg.replace(inference=inference)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        splits = _OomSplits()
        logging.getLogger("kernel_lib.model").addHandler(splits)
        try:
            result = run_inference(test, models, work / f"memory_{batch}.csv", run_cfg, progress=False)
        except ValueError as err:  # out of memory on one image (kernel_lib.model splits batches first)
            rows.append({"batch_size": batch, "oom": True, "error": str(err), "splits": splits.messages})
            break
        finally:
            logging.getLogger("kernel_lib.model").removeHandler(splits)
        if result.n_images != batch:
            raise ValueError(f"memory: batch size {batch} predicted {result.n_images} images")
        row: dict[str, Any] = {"batch_size": batch, "images": result.n_images, "seconds": time.perf_counter() - start}
        row["splits"] = splits.messages  # a batch that ran out of memory and was split: it does not fit
        row["s_per_image"] = result.timings["inference"] / result.n_images
        if cuda:
            row["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        rows.append(row)
    fits = [r["batch_size"] for r in rows if r.get("peak_reserved_gib", 1e9) <= T4_BUDGET_GIB and not r["splits"]]
    return {"models": str(models), "folds": [name for name, _ in listed], "config": str(config) if config else None,
            "method": cfg.ensemble.method, "tta": list(cfg.ensemble.tta), "half": True, "data": str(folder),
            "rows": rows, "t4_budget_gib": T4_BUDGET_GIB,
            "largest_batch_fitting_t4": max(fits) if fits else None}  # fmt: skip


class _OomSplits(logging.Handler):
    """Collects kernel_lib.model's out-of-memory warnings (a batch split, a chunk halved)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "out of memory" in record.getMessage():
            self.messages.append(record.getMessage())


def train(check: Check) -> dict[str, Any]:
    folds_csv = check.work / "folds.csv"
    n_folds = 1 if check.quick else 5
    kernel = [check.python, "-m", "kernel_lib"]
    check.run("folds", [*kernel, "folds", "--truth", str(check.data / "train.csv"), "--out", str(folds_csv),
                        "--n-folds", str(max(n_folds, 2))], cwd=check.work)  # fmt: skip
    options = ["--iters", "2", "--max-images", "4", "--no-heldout", "--workers", "0"] if check.quick else []
    if not check.quick:  # the shipped folds' recipe (docs/benchmarks.md), fewer iterations: a fold in ~1 minute
        options = ["--iters", str(TRAIN_ITERS), "--batch", "8", "--lr", "0.02", "--min-sizes", "480,520,560",
                   "--max-size", "1000", "--test-size", "520", "--crop", "256", "--normalization", "per_image",
                   "--workers", "4"]  # fmt: skip
    models = check.work / "models"
    done: list[dict[str, Any]] = []
    last = 0.0
    for fold in range(n_folds):
        if done and check.left() < 1.2 * last + RESERVE_S:
            check.log(f"train: fold {fold} would not fit ({check.left():.0f} s left, last fold took {last:.0f} s)")
            break
        start = time.monotonic()
        cmd = [*kernel, "train", "--data", str(check.data), "--folds", str(folds_csv), "--fold", str(fold),
               "--out", str(models), "--arch", "R50-narrow", "--device", check.device, *options]  # fmt: skip
        check.run(f"train fold {fold}", cmd, cwd=check.work, timeout=check.left() - RESERVE_S)
        last = time.monotonic() - start
        folder = models / f"fold{fold}"
        weights = folder / "model_final.pth"
        record: dict[str, Any] = {"fold": fold, "seconds": last, "weights_bytes": weights.stat().st_size}
        record["meta"] = json.loads((folder / "meta.json").read_text())
        record["config_yaml"] = (folder / "config.yaml").read_text()
        if weights.stat().st_size <= MAX_WEIGHT_BYTES and len(done) < MAX_FOLD_FILES:
            shutil.copy2(weights, check.out / f"fold{fold}_model_final.pth")
            record["weights_file"] = f"fold{fold}_model_final.pth"
        done.append(record)
    return {"arch": "R50-narrow", "options": options, "folds": done}


STEPS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "install": install,
    "cuda_tests": cuda_tests,
    "bench_inference": bench_inference,
    "t4_like": t4_like,
    "memory": memory,
    "train": train,
}


# ------------------------------------------------------------------------ dry run


DEVICE_UPLOAD_BYTES = 64 * 2**20
"""What one device call uploads at most: the working tree (tracked files and untracked
ones git does not ignore) plus the carried paths."""
UPLOAD_ROOM_BYTES = 4 * 2**20
"""Room the dry run asks to be left under :data:`DEVICE_UPLOAD_BYTES`."""
CARRY_BUNDLE = "build/kaggle-dataset"
CARRY_DATA = "build/gpu_data/sartorius-mini"
CARRIES = (CARRY_BUNDLE, "build/gpu_data")
"""The device call's carry list (both under build/, which .gitignore ignores)."""
STAGE_IMAGES = 64
"""Images of the pack :func:`stage_data` carries (the check needs 41 at most at once)."""


def tree_files(root: Path = ROOT) -> list[str]:
    """The working tree a device call copies: tracked files and untracked files that git
    does not ignore, relative to ``root`` (a tracked file deleted here is not copied)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    names = sorted({name for name in out.split("\0") if name})
    return [name for name in names if (root / name).is_file() or (root / name).is_symlink()]


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def upload_size(bundle: Path, data: Path, root: Path = ROOT) -> dict[str, Any]:
    """Bytes one device call uploads: the tree plus the bundle and the pack carried.

    Raises:
        ValueError: over :data:`DEVICE_UPLOAD_BYTES` less :data:`UPLOAD_ROOM_BYTES`.
    """
    files = tree_files(root)
    tree = sum((root / f).lstat().st_size for f in files)
    carried = {CARRY_BUNDLE: _bytes_under(bundle), CARRY_DATA: _bytes_under(data)}
    total = tree + sum(carried.values())
    found = {"tree_files": len(files), "tree_bytes": tree, "carries_bytes": carried, "total_bytes": total,
             "limit_bytes": DEVICE_UPLOAD_BYTES, "room_bytes": DEVICE_UPLOAD_BYTES - total,
             "total_mib": round(total / 2**20, 1)}  # fmt: skip
    if total > DEVICE_UPLOAD_BYTES - UPLOAD_ROOM_BYTES:
        parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in carried.items())
        allowed = (DEVICE_UPLOAD_BYTES - UPLOAD_ROOM_BYTES) // 2**20
        raise ValueError(
            f"upload: the tree ({tree / 2**20:.1f} MiB) and the carries ({parts}) come to {total / 2**20:.1f} MiB; "
            f"expected at most {allowed} MiB (the device's {DEVICE_UPLOAD_BYTES // 2**20} MiB less "
            f"{UPLOAD_ROOM_BYTES // 2**20} MiB of room)"
        )
    return found


def stage_data(source: Path, target: Path, n: int = STAGE_IMAGES) -> dict[str, Any]:
    """Write the pack the device call carries: the first ``n`` annotated images of
    ``source`` (by id) and their train.csv rows, to ``target`` (replaced).

    Raises:
        ValueError: ``source`` is no annotated pack, holds fewer than ``n`` annotated
            images, or the pick misses a cell type.
    """
    import pandas as pd

    truth = source / "train.csv"
    if not truth.is_file() or not (source / "train").is_dir():
        raise ValueError(f"--stage-data {source}: expected an annotated pack (train.csv, train/), got none")
    rows = pd.read_csv(truth, dtype=str, keep_default_na=False)
    ids = sorted(i for i in rows["id"].unique() if (source / "train" / f"{i}.png").is_file())
    if len(ids) < n:
        raise ValueError(f"--stage-data {source}: expected at least {n} annotated images, got {len(ids)}")
    picked = rows[rows["id"].isin(ids[:n])]
    types = sorted(picked["cell_type"].unique())
    if len(types) < 3:
        raise ValueError(f"--stage-data {source}: the first {n} images hold cell types {types}, expected all three")
    if target.exists():
        shutil.rmtree(target)
    (target / "train").mkdir(parents=True)
    picked.to_csv(target / "train.csv", index=False)
    for image_id in ids[:n]:
        shutil.copy2(source / "train" / f"{image_id}.png", target / "train" / f"{image_id}.png")
    return {"images": n, "rows": len(picked), "cell_types": types, "bytes": _bytes_under(target)}


def dry_run(bundle: Path, data: Path, out: Path, deadline: float, python: str = sys.executable) -> int:
    """What the device call does, here: the upload measured (:func:`upload_size`), the
    tree and carries copied to a folder with no ``../shared`` beside it (as on the
    device), and the check run there on the CPU at toy sizes (``--quick``) with the
    carried pack and bundle. The results JSON gets an ``upload`` record. Returns the
    check's exit status.

    Raises:
        ValueError: a carry missing, or the upload over the limit.
    """
    for path, how in ((bundle, "run `.venv/bin/python build_dataset.py`"),
                      (data, "run `bash bench/gpu_check.sh --stage-data ../shared/data/sartorius-mini`")):  # fmt: skip
        if not path.is_dir():
            raise ValueError(f"dry run: expected the carried folder {path}, found none; {how}")
    if not (data / "train.csv").is_file():
        raise ValueError(f"dry run: expected an annotated pack in {data} (train.csv, train/), got no train.csv")
    sizes = upload_size(bundle, data)
    print(f"upload: {sizes['total_mib']} MiB of {DEVICE_UPLOAD_BYTES // 2**20} MiB "
          f"(tree {sizes['tree_bytes'] / 2**20:.1f} MiB, {sizes['tree_files']} files)", flush=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_device_") as tmp:
        copy = Path(tmp) / ROOT.name  # nothing beside it: ../shared is hidden as on the device
        for name in tree_files():
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target, follow_symlinks=False)
        shutil.copytree(bundle, copy / CARRY_BUNDLE, symlinks=False)
        shutil.copytree(data, copy / CARRY_DATA, symlinks=False)
        env = {k: v for k, v in os.environ.items() if k not in ("SARTORIUS_DATA", "OUT")}
        cmd = [python, "bench/gpu_check.py", "--device", "cpu", "--quick", "--data", CARRY_DATA,
               "--bundle", CARRY_BUNDLE, "--out", str(out), "--deadline", str(deadline)]  # fmt: skip
        print(f"dry run in {copy}: {' '.join(cmd)}", flush=True)
        code = subprocess.run(cmd, cwd=copy, env=env).returncode
    results_path = out / "gpu_check.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"steps": {}}
    results["upload"] = sizes
    results_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return code


# ------------------------------------------------------------------------ main


def run_check(check: Check) -> dict[str, Any]:
    """Every step in order, each recorded with its status and seconds; the JSON is
    rewritten after each step, so a run cut short still leaves what it measured."""
    check.results.update(
        {"device": check.device, "quick": check.quick, "machine": platform.platform(),
         "python": sys.version.split()[0], "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    )  # fmt: skip
    for name, step in STEPS.items():
        if check.left() < RESERVE_S:
            check.results["steps"][name] = {"status": "skipped", "why": "deadline"}
            continue
        if name == "install" or check.results["steps"].get("install", {}).get("status") == "ok":
            start = time.monotonic()
            try:
                found = step(check)
                check.results["steps"][name] = {"status": "ok", "seconds": time.monotonic() - start, **found}
            except (ValueError, OSError) as err:
                check.results["steps"][name] = {"status": "failed", "seconds": time.monotonic() - start,
                                                "error": str(err)}  # fmt: skip
                check.log(f"{name}: FAILED: {err}")
        else:
            check.results["steps"][name] = {"status": "skipped", "why": "install failed"}
        check.log(f"{name}: {check.results['steps'][name]['status']}")
        (check.out / "gpu_check.json").write_text(json.dumps(check.results, indent=2, default=str) + "\n")
    return check.results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="toy sizes: the whole script in about a minute")
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "kaggle-dataset", help="build_dataset.py --out")
    parser.add_argument(
        "--data",
        type=Path,
        help=f"annotated pack (train.csv, train/); default {CARRY_DATA}, ../shared/data/sartorius-mini, "
        "then tests/data (always tests/data with --quick)",
    )
    parser.add_argument(
        "--models", type=Path, default=SHIPPED, help="fold models timed, with their best_config.json (default: shipped)"
    )
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="results folder (default $OUT, else a temp folder)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEADLINE_S,
        help=f"seconds the whole check may take (default {DEADLINE_S:.0f}: one device call of 5 minutes, twice "
        "within the 15 minutes a session has)",
    )
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=f"here, before the device call: measure the upload (tree + {CARRY_BUNDLE} + {CARRY_DATA}, "
        f"<= {(DEVICE_UPLOAD_BYTES - UPLOAD_ROOM_BYTES) // 2**20} MiB) and run every step at toy sizes on a copy "
        "of it with no ../shared beside it (--bundle, --data: the folders carried)",
    )
    parser.add_argument(
        "--stage-data",
        type=Path,
        metavar="PACK",
        help=f"write {CARRY_DATA} (carried to the device): the first {STAGE_IMAGES} annotated images of PACK",
    )
    parser.add_argument("--probe-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_memory:
        print(json.dumps(probe_memory(args.device, args.quick, args.work, args.models, args.data, args.config)))
        return 0
    if args.stage_data:
        try:
            staged = stage_data(args.stage_data, ROOT / CARRY_DATA)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"staged {ROOT / CARRY_DATA}: {json.dumps(staged)}")
        return 0
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check_out_"))
    if args.dry_run:
        try:
            code = dry_run(args.bundle, args.data or ROOT / CARRY_DATA, out, args.deadline)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"dry run: {out / 'gpu_check.json'}; exit {code}")
        return code
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or next(
        p for p in (ROOT / CARRY_DATA, ROOT.parent / "shared" / "data" / "sartorius-mini",
                    ROOT / "tests" / "data") if (p / "train.csv").is_file()
    )  # fmt: skip
    if args.quick and args.data is None:
        data = ROOT / "tests" / "data"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        # absolute: the folds and train steps run in the work folder (a relative --data failed there)
        check = Check(args.device, args.quick, Path(work), out.resolve(), args.bundle.resolve(), data.resolve(),
                      time.monotonic() + args.deadline, args.models.resolve())  # fmt: skip
        check.log(f"gpu check: device {args.device}{' (quick)' if args.quick else ''}, out {out}, data {data}")
        results = run_check(check)
    failed = [name for name, step in results["steps"].items() if step["status"] != "ok"]
    print(f"results: {out / 'gpu_check.json'}; steps not ok: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
