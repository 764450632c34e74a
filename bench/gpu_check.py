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
   identity + hflip) and 40 images of ``--data`` (bundle with fp16 vs the public
   DefaultPredictor loop); the step fails unless all 40 (and the 5 folds) ran.
4. ``memory``: peak GPU memory of ``run_inference`` (the same folds and config, fp16) per
   batch size on images of ``--data`` (each batch size gets that many images, checked),
   and the largest batch size whose peak fits a 16 GB T4 (``T4_BUDGET_GIB``).
5. ``train``: ``python -m kernel_lib train --arch R50-narrow`` (from scratch) fold after
   fold while the next one is projected to fit before the deadline; each fold's
   ``model_final.pth`` (<= 12 MiB) is copied to ``$OUT/fold<K>_model_final.pth`` and its
   config.yaml and meta.json go into the results JSON.

``--device cpu --quick`` runs the same steps at toy sizes (1 image and the first shipped
fold, identity view; 2 training iterations) so that a CPU test covers the whole script. At most 8 files come back from
the GPU machine: the results JSON, the log and up to 6 fold weights.

Usage::

    bash bench/gpu_check.sh --device cuda [--bundle build/kaggle-dataset] [--data gpu_data/sartorius-mini]
        [--models models/r50-narrow]
    .venv/bin/python bench/gpu_check.py --device cpu --quick --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
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
MEMORY_BATCHES = (1, 2, 4, 8, 16)
BUNDLE_NAME = "sartorius-offline-bundle"
HIDDEN = ("detectron2", "sal_detectron2", "kernel_lib", "__editable__")
"""site-packages entries the throw-away venv does not see (what the install cell installs)."""
T4_BUDGET_GIB = 14.5
"""Peak reserved GPU memory that fits a 16 GB T4 (15.1 GiB usable, minus CUDA context)."""
MAX_WEIGHT_BYTES = 12 * 2**20
MAX_FOLD_FILES = 6
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


def bench_inference(check: Check) -> dict[str, Any]:
    target = check.work / "bench_inference.json"
    images, folds = (1, 1) if check.quick else (BENCH_IMAGES, 5)
    sizes = ["--images", str(images), "--folds", str(folds)] + (["--tta", "identity"] if check.quick else [])
    cmd = [check.python, "bench/bench_inference.py", "--device", check.device, *_pipeline_args(check), *sizes,
           "--json", str(target)]  # fmt: skip
    check.run("bench_inference", cmd, timeout=check.left() * (0.9 if check.quick else 0.4))
    found = json.loads(target.read_text())
    if found.get("images") != images or found.get("folds") != folds:
        raise ValueError(
            f"bench_inference: ran {found.get('images')} images x {found.get('folds')} folds, asked for "
            f"{images} x {folds} (--data {check.data})"
        )
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
        try:
            result = run_inference(test, models, work / f"memory_{batch}.csv", run_cfg, progress=False)
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch_size": batch, "oom": True})
            break
        if result.n_images != batch:
            raise ValueError(f"memory: batch size {batch} predicted {result.n_images} images")
        row: dict[str, Any] = {"batch_size": batch, "images": result.n_images, "seconds": time.perf_counter() - start}
        row["s_per_image"] = result.timings["inference"] / result.n_images
        if cuda:
            row["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        rows.append(row)
    fits = [r["batch_size"] for r in rows if r.get("peak_reserved_gib", 1e9) <= T4_BUDGET_GIB]
    return {"models": str(models), "folds": [name for name, _ in listed], "config": str(config) if config else None,
            "method": cfg.ensemble.method, "tta": list(cfg.ensemble.tta), "half": True, "data": str(folder),
            "rows": rows, "t4_budget_gib": T4_BUDGET_GIB,
            "largest_batch_fitting_t4": max(fits) if fits else None}  # fmt: skip


def train(check: Check) -> dict[str, Any]:
    folds_csv = check.work / "folds.csv"
    n_folds = 1 if check.quick else 5
    kernel = [check.python, "-m", "kernel_lib"]
    check.run("folds", [*kernel, "folds", "--truth", str(check.data / "train.csv"), "--out", str(folds_csv),
                        "--n-folds", str(max(n_folds, 2))], cwd=check.work)  # fmt: skip
    options = ["--iters", "2", "--max-images", "4", "--no-heldout", "--workers", "0"] if check.quick else []
    if not check.quick:
        options = ["--iters", "600", "--batch", "8", "--workers", "4"]
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
    "memory": memory,
    "train": train,
}


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
        help="annotated pack (train.csv, train/); default gpu_data/sartorius-mini, ../shared/data/sartorius-mini, "
        "then tests/data (always tests/data with --quick)",
    )
    parser.add_argument(
        "--models", type=Path, default=SHIPPED, help="fold models timed, with their best_config.json (default: shipped)"
    )
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="results folder (default $OUT, else a temp folder)")
    parser.add_argument("--deadline", type=float, default=510.0, help="seconds the whole check may take (default 510)")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--probe-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_memory:
        print(json.dumps(probe_memory(args.device, args.quick, args.work, args.models, args.data, args.config)))
        return 0
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check_out_"))
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or next(
        p for p in (ROOT / "gpu_data" / "sartorius-mini", ROOT.parent / "shared" / "data" / "sartorius-mini",
                    ROOT / "tests" / "data") if (p / "train.csv").is_file()
    )  # fmt: skip
    if args.quick and args.data is None:
        data = ROOT / "tests" / "data"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        check = Check(
            args.device, args.quick, Path(work), out, args.bundle, data, time.monotonic() + args.deadline, args.models
        )
        check.log(f"gpu check: device {args.device}{' (quick)' if args.quick else ''}, out {out}, data {data}")
        results = run_check(check)
    failed = [name for name, step in results["steps"].items() if step["status"] != "ok"]
    print(f"results: {out / 'gpu_check.json'}; steps not ok: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
