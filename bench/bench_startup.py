"""Benchmark: start-up of the command line, whole process (issue 14, item 4).

Runs each command N times in a fresh interpreter and reports the best wall time and the
best CPU time (user + system of the child; on a shared machine CPU time varies less
than wall time), and which heavy modules the command imported:

- ``python -m kernel_lib --help``
- ``python -m kernel_lib score --truth PACK/train.csv --pred PRED`` on the annotated
  pack, PRED = the truth itself (every image scores 1.0), written to a temp file.
- ``python -c pass`` (the interpreter alone).

Usage: ``.venv/bin/python bench/bench_startup.py [--repeats 5] [--pack DIR] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "pandas", "cv2", "torch", "tqdm", "kernel_lib.ensemble", "kernel_lib.metric")


def timed(cmd: list[str], repeats: int) -> dict[str, float]:
    """Best wall and CPU seconds of ``repeats`` runs of ``cmd`` (output discarded)."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {"wall_s": min(walls), "cpu_s": min(cpus)}


def heavy_imports(args: list[str]) -> list[str]:
    """Which of :data:`HEAVY` ``python -m kernel_lib ARGS`` has imported when it exits."""
    code = (
        "import atexit, json, sys, runpy\n"
        f"atexit.register(lambda: print('\\nMODULES', json.dumps([m for m in {HEAVY!r} if m in sys.modules]), "
        "file=sys.stderr))\n"
        f"sys.argv = ['kernel_lib', *{args!r}]\n"
        "try:\n    runpy.run_module('kernel_lib', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES")]
    return json.loads(line[-1][len("MODULES ") :]) if line else ["?"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--pack", type=Path, default=None, help="annotated pack (default $SARTORIUS_DATA or ../shared/...)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    pack = args.pack or Path(os.environ.get("SARTORIUS_DATA", ROOT.parent / "shared" / "data" / "sartorius-mini"))
    py = sys.executable
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        commands: dict[str, list[str]] = {
            "python -c pass": [py, "-c", "pass"],
            "--help": [py, "-m", "kernel_lib", "--help"],
        }
        if (pack / "train.csv").is_file():
            import pandas as pd

            pred = Path(tmp) / "pred.csv"
            truth = pd.read_csv(pack / "train.csv", usecols=["id", "annotation"])
            truth.rename(columns={"annotation": "predicted"}).to_csv(pred, index=False)
            score_args = ["score", "--truth", str(pack / "train.csv"), "--pred", str(pred)]
            commands[f"score ({truth['id'].nunique()} images)"] = [py, "-m", "kernel_lib", *score_args]
        else:
            print(f"pack {pack} not found: score not timed")
        for name, cmd in commands.items():
            results[name] = dict(timed(cmd, args.repeats))
            if cmd[1:3] == ["-m", "kernel_lib"]:
                results[name]["heavy_modules"] = heavy_imports(cmd[3:])
    print(f"best of {args.repeats} runs, whole process")
    for name, row in results.items():
        modules = row.get("heavy_modules")
        extra = f"   imports {', '.join(modules) or 'none of ' + '/'.join(HEAVY[:4])}" if modules is not None else ""
        print(f"  {name:<22} wall {row['wall_s']:.3f} s   cpu {row['cpu_s']:.3f} s{extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
