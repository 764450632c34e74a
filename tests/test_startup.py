"""Start-up: the command line imports only what the command it runs needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("numpy", "pandas", "cv2", "tqdm", "torch", "detectron2", "kernel_lib.ensemble", "kernel_lib.commands.train")


def _imported(*args: str) -> tuple[int, list[str]]:
    """(exit code, which WATCHED modules are loaded) after ``python -m kernel_lib ARGS``."""
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: print(json.dumps([m for m in {WATCHED!r} if m in sys.modules])))\n"
        f"sys.argv = ['kernel_lib', *{list(args)!r}]\n"
        "try:\n    runpy.run_module('kernel_lib', run_name='__main__')\n"
        "except SystemExit as exit:\n    atexit.register(print, 'rc', exit.code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    rc = int(lines[-2].split()[1]) if len(lines) >= 2 and lines[-2].startswith("rc") else 0
    return rc, json.loads(lines[-1])


def test_help_imports_no_command_and_no_numpy() -> None:
    rc, loaded = _imported("--help")
    assert rc == 0
    assert loaded == []


def test_score_imports_the_metric_but_not_torch_images_or_other_commands(data_dir: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred.csv"
    pred.write_text("id,predicted\n")
    rc, loaded = _imported("score", "--truth", str(data_dir / "train.csv"), "--pred", str(pred), "--only-predicted")
    assert rc == 0
    assert "numpy" in loaded and "pandas" in loaded  # what scoring needs
    assert not {"cv2", "torch", "detectron2", "kernel_lib.ensemble", "kernel_lib.commands.train"} & set(loaded)


def test_lazy_exports_resolve_on_first_use_and_leave_the_submodules_alone() -> None:
    code = (
        "import sys, kernel_lib\n"
        "print('kernel_lib.masks' in sys.modules)\n"
        "from kernel_lib import CropMasks\n"
        "import kernel_lib.postprocess\n"
        "print('kernel_lib.masks' in sys.modules, CropMasks.__module__, type(kernel_lib.postprocess).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "kernel_lib.masks", "module"]
