"""The package's public surface: every exported name resolves; torch stays unloaded."""

from __future__ import annotations

import subprocess
import sys

import kernel_lib


def test_every_exported_name_resolves() -> None:
    assert sorted(set(kernel_lib.__all__)) == sorted(kernel_lib.__all__)  # no name twice
    missing = [name for name in kernel_lib.__all__ if not hasattr(kernel_lib, name)]
    assert missing == []


def test_importing_the_library_and_scoring_does_not_load_torch() -> None:
    code = (
        "import sys, kernel_lib, kernel_lib.metric, kernel_lib.submission, kernel_lib.__main__\n"
        "kernel_lib.__main__.build_parser()\n"
        "print(sorted(m for m in ('torch', 'detectron2', 'kernel_lib.train') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
