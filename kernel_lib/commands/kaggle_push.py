"""``python -m kernel_lib kaggle-push --models DIR --user NAME [--wait] [--submit -m MSG] [--dry-run]``.

From trained fold folders to a pushed (and optionally submitted) Kaggle notebook, every
step through the real ``kaggle`` CLI, each command printed before it runs:

1. the bundle dataset (``build_dataset.py``'s staged folder, ``--bundle``) and the
   model-weights dataset (``--models``): ``kaggle datasets version`` when the dataset
   exists, else ``kaggle datasets create`` (both ``--dir-mode zip``, so sub-folders go up);
2. the inference notebook, in a kernel folder (``--work``) with a ``kernel-metadata.json``
   naming both datasets, the competition, GPU on (``--accelerator``), internet off:
   ``kaggle kernels push``;
3. ``--wait``: ``kaggle kernels status`` until the run is complete;
4. ``--submit -m MSG``: ``kaggle competitions submit`` of that version's submission.csv
   (implies ``--wait``).

It stops at the first command that fails, with the CLI's own message. ``--dry-run`` only
prints the commands and the metadata it would write, after the same checks as a real run.

The kernel folder (``--work``) is only ever one this command made: it marks it with a
``.kaggle-push-work`` file when it creates it, rewrites only its own two files there,
deletes nothing, and refuses an existing folder without the mark (``.``, the models
folder, any folder of yours) before any Kaggle command.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kernel_lib.config import read_json
from kernel_lib.outputs import atomic_output, check_input_file, file_kind

ROOT = Path(__file__).resolve().parents[2]
COMPETITION = "sartorius-cell-instance-segmentation"
PLACEHOLDER_USER = "your-kaggle-username"
DEFAULT_ACCELERATOR = "NvidiaTeslaT4"
"""Kaggle's "GPU T4 x2" (the kaggle CLI's machine_shape name); the retired P100 runs on a T4 anyway."""
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")  # fullmatch: "$" would let a trailing newline through
_ACCELERATOR = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
WORK_MARKER = ".kaggle-push-work"
"""The file kaggle-push writes in a kernel folder it creates; a folder without it is never rewritten."""
_ERROR = re.compile(r"\berror\b", re.IGNORECASE)
_DONE = {"COMPLETE"}
_FAILED = {"ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", required=True, type=Path, help="folder of fold folders (config.yaml + model_final.pth)"
    )
    parser.add_argument("--user", required=True, help="your Kaggle user name (owner of the datasets and the notebook)")
    parser.add_argument(
        "--bundle",
        type=Path,
        default=ROOT / "build" / "kaggle-dataset",
        help="the bundle dataset folder staged by build_dataset.py (default build/kaggle-dataset)",
    )
    parser.add_argument(
        "--notebook",
        type=Path,
        default=ROOT / "notebooks" / "sartorius-inference.ipynb",
        help="the inference notebook to push (default notebooks/sartorius-inference.ipynb)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "build" / "kaggle-kernel",
        help="kernel folder it makes (and marks) for `kaggle kernels push`; an existing folder it did not make "
        "is refused (default build/kaggle-kernel)",
    )
    parser.add_argument("--bundle-slug", default="sartorius-offline-bundle", help="bundle dataset slug")
    parser.add_argument("--models-slug", default="sartorius-fold-models", help="model-weights dataset slug")
    parser.add_argument("--kernel-slug", default="sartorius-inference", help="notebook slug")
    parser.add_argument(
        "--accelerator",
        default=DEFAULT_ACCELERATOR,
        help=f"kernel-metadata.json machine_shape (default {DEFAULT_ACCELERATOR}: GPU T4 x2)",
    )
    parser.add_argument("--notes", default="pushed by kernel_lib kaggle-push", help="dataset version notes")
    parser.add_argument("--wait", action="store_true", help="wait until the notebook's run is complete")
    parser.add_argument("--timeout", type=float, default=9 * 3600, help="--wait: give up after this many seconds")
    parser.add_argument("--poll", type=float, default=60.0, help="--wait: seconds between status checks (default 60)")
    parser.add_argument("--submit", action="store_true", help="submit the pushed version (implies --wait)")
    parser.add_argument("-m", "--message", default="", help="--submit: the submission's description")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and metadata), run nothing")


# --------------------------------------------------------------------------- checks and metadata


def check_inputs(args: argparse.Namespace) -> None:
    """Everything that can be checked before the first command runs.

    Raises:
        ValueError: naming the option, what was expected and what came.
    """
    if not _SLUG.fullmatch(args.user) or args.user == PLACEHOLDER_USER:
        raise ValueError(f"--user: expected your Kaggle user name (letters, digits, dashes), got {args.user!r}")
    for option in ("bundle_slug", "models_slug", "kernel_slug"):
        slug = getattr(args, option)
        if not _SLUG.fullmatch(slug) or not 6 <= len(slug) <= 50:
            raise ValueError(f"--{option.replace('_', '-')}: expected 6-50 letters, digits or dashes, got {slug!r}")
    if not _ACCELERATOR.fullmatch(args.accelerator):
        raise ValueError(
            f"--accelerator: expected a machine shape name such as {DEFAULT_ACCELERATOR} (the names `kaggle kernels "
            f"push --help` lists for --accelerator), got {args.accelerator!r}"
        )
    if args.submit and not args.message.strip():
        raise ValueError("--submit needs -m MESSAGE: the submission's description")
    if not (math.isfinite(args.poll) and math.isfinite(args.timeout)) or args.poll < 0 or args.timeout <= 0:
        raise ValueError(
            f"--poll must be >= 0 and --timeout > 0 seconds (finite numbers), got {args.poll} and {args.timeout}"
        )
    models: Path = args.models
    if not models.is_dir() or not any(models.glob("*/model_final.pth")):
        raise ValueError(
            f"--models {models}: expected a folder of fold folders, each with config.yaml and model_final.pth "
            f"(what `python -m kernel_lib train --out` fills)"
        )
    bundle: Path = args.bundle
    if not any((bundle / "wheels").glob("sal_detectron2-*.whl")) or not (bundle / "dataset-metadata.json").is_file():
        raise ValueError(
            f"--bundle {bundle}: no staged bundle dataset there (wheels/sal_detectron2-*.whl, dataset-metadata.json); "
            f"stage it first: python build_dataset.py --id {args.user}/{args.bundle_slug} --out {bundle}"
        )
    notebook_fix = "pass the inference notebook (.ipynb) to push"
    if file_kind(args.notebook) == "missing":
        raise ValueError(f"--notebook {args.notebook} does not exist; {notebook_fix}")
    check_input_file(args.notebook, "--notebook", notebook_fix)
    if args.notebook.suffix != ".ipynb":
        raise ValueError(f"--notebook {args.notebook} is not a Jupyter notebook (.ipynb); {notebook_fix}")
    check_work(args.work, {"--models": models, "--bundle": bundle, "--notebook": args.notebook})


def check_work(work: Path, inputs: dict[str, Path]) -> None:
    """The kernel folder may be written: it does not exist yet (it is made and marked),
    or it is one this command made (it holds :data:`WORK_MARKER`), and it is none of the
    inputs, the repository, nor a folder inside or around them.

    Raises:
        ValueError: naming the folder, why, and the fix.
    """
    fix = f"pass a new folder (kaggle-push makes and marks it), e.g. {ROOT / 'build' / 'kaggle-kernel'}"
    resolved = work.resolve()
    if resolved == ROOT or ROOT.is_relative_to(resolved):
        raise ValueError(f"--work {work} is the repository or a folder around it; {fix}")
    for name, given in inputs.items():
        other = given.resolve()
        if resolved == other or resolved.is_relative_to(other) or other.is_relative_to(resolved):
            where = "is" if resolved == other else "is inside" if resolved.is_relative_to(other) else "holds"
            raise ValueError(f"--work {work} {where} the {name} {given}; {fix}")
    kind = file_kind(work)
    if kind == "missing":
        return
    if kind != "a folder":
        raise ValueError(f"--work {work} is {kind or 'a file'}, not a folder; {fix}")
    if file_kind(work / WORK_MARKER) is not None:
        raise ValueError(
            f"--work {work} exists and was not made by kaggle-push (no {WORK_MARKER} file in it), so it is not "
            f"rewritten; {fix}, or move that folder away yourself"
        )


def dataset_metadata(folder: Path, dataset_id: str, title: str) -> dict[str, object]:
    """``folder/dataset-metadata.json`` with ``id`` set (title and licence kept when present).

    Raises:
        ValueError: the file is there but not a regular file holding one JSON object.
    """
    path = folder / "dataset-metadata.json"
    meta: dict[str, object] = {}
    kind = file_kind(path)
    fix = "fix it or delete it (kaggle-push writes a new one)"
    if kind not in (None, "missing"):
        raise ValueError(f"{path} is {kind}, not a file; {fix}")
    if kind is None:
        loaded = read_json(path, fix)
        if not isinstance(loaded, dict):
            raise ValueError(
                f"{path} holds a JSON {type(loaded).__name__}, not an object like "
                f'{{"id": "USER/SLUG", "title": "...", "licenses": [{{"name": "other"}}]}}; {fix}'
            )
        meta = loaded
    meta.setdefault("title", title)
    meta.setdefault("licenses", [{"name": "other"}])
    meta["id"] = dataset_id
    return meta


def kernel_metadata(args: argparse.Namespace, code_file: str) -> dict[str, object]:
    """The kernel-metadata.json pushed: GPU on (``machine_shape``), internet off, three sources."""
    return {
        "id": f"{args.user}/{args.kernel_slug}",
        "title": " ".join(part.capitalize() for part in args.kernel_slug.split("-")),
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,
        "machine_shape": args.accelerator,
        "dataset_sources": [f"{args.user}/{args.bundle_slug}", f"{args.user}/{args.models_slug}"],
        "competition_sources": [COMPETITION],
        "kernel_sources": [],
        "model_sources": [],
    }


def notebook_text(path: Path, models_slug: str) -> str:
    """The notebook's JSON with its parameters cell set to read ``models_slug``.

    Raises:
        ValueError: ``path`` is not a Jupyter notebook, or has no (or several) cells
            setting ``MODELS_DATASET``.
    """
    fix = "pass the inference notebook, notebooks/sartorius-inference.ipynb"
    notebook = read_json(path, fix)
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list) or "nbformat" not in notebook or not all(isinstance(c, dict) for c in cells):
        raise ValueError(f"--notebook {path} is not a Jupyter notebook (a JSON object with nbformat and cells); {fix}")
    pattern = re.compile(r'^MODELS_DATASET = "[^"]*"', re.MULTILINE)
    hits = 0
    for cell in cells:
        raw = cell.get("source", [])
        if not (isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(line, str) for line in raw))):
            raise ValueError(f"--notebook {path}: a cell's source is not text; {fix}")
        source = "".join(raw)
        if cell.get("cell_type") == "code" and pattern.search(source):
            cell["source"] = pattern.sub(f'MODELS_DATASET = "{models_slug}"', source)
            hits += 1
    if hits != 1:
        raise ValueError(f'{path}: expected one code cell setting MODELS_DATASET = "...", found {hits}')
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- the kaggle CLI


def kaggle_executable() -> str:
    local = Path(sys.executable).parent / "kaggle"
    if local.is_file():
        return str(local)
    found = shutil.which("kaggle")
    if found is None:
        raise ValueError("the `kaggle` command is not installed; pip install kaggle (scripts/setup_env.sh does)")
    return found


def show(args: Sequence[str]) -> str:
    return "$ kaggle " + " ".join(f"'{a}'" if (" " in a or not a) else a for a in args)


def run_kaggle(args: Sequence[str], check: bool = True) -> tuple[int, str]:
    """Run ``kaggle ARGS``, printing the command and streaming its output; (status, output).

    Raises:
        ValueError: with ``check``, when it exits non-zero or reports an error; the
            message holds the CLI's last lines.
    """
    print(show(args), flush=True)
    process = subprocess.Popen(
        [kaggle_executable(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    for line in process.stdout or ():
        print(line, end="", flush=True)
        lines.append(line)
    status = process.wait()
    text = "".join(lines)
    if check and (status != 0 or _ERROR.search(text)):
        said = "\n".join(line.rstrip() for line in lines[-8:] if line.strip()) or "(no output)"
        raise ValueError(
            f"`kaggle {' '.join(args[:2])}` failed (exit status {status}); the kaggle CLI said:\n{said}\n"
            f"Fix that, then run kaggle-push again (what already succeeded is versioned, not duplicated)"
        )
    return status, text


def ship_dataset(folder: Path, dataset_id: str, notes: str, dry_run: bool) -> None:
    """``datasets version`` when ``dataset_id`` exists, else ``datasets create`` (``--dir-mode zip``)."""
    status_args = ["datasets", "status", dataset_id]
    version = ["datasets", "version", "-p", str(folder), "-m", notes, "--dir-mode", "zip"]
    create = ["datasets", "create", "-p", str(folder), "--dir-mode", "zip"]
    if dry_run:
        print(f"{show(status_args)}\n{show(version)}   # when it exists\n{show(create)}   # when it does not")
        return
    status, text = run_kaggle(status_args, check=False)
    if status == 0 and not _ERROR.search(text):
        run_kaggle(version)
    elif re.search(r"\b404\b|not found", text, re.IGNORECASE):
        run_kaggle(create)
    else:
        run_kaggle(status_args)  # raises with the CLI's message (credentials, network, ...)


def wait_for(kernel_id: str, version: int | None, timeout: float, poll: float) -> None:
    """Poll ``kaggle kernels status`` until the run is complete.

    Raises:
        ValueError: the run failed or was cancelled, or ``timeout`` seconds passed.
    """
    target = f"{kernel_id}/{version}" if version else kernel_id
    deadline = time.monotonic() + timeout
    while True:
        # check=False: a failed run's status line says "ERROR" and is read below, not raised as a CLI failure
        code, text = run_kaggle(["kernels", "status", kernel_id], check=False)
        match = re.search(r'has status "(?:\w+\.)?(\w+)"', text)
        if code != 0 or match is None:
            said = "\n".join(line for line in text.splitlines()[-8:] if line.strip()) or "(no output)"
            raise ValueError(f"`kaggle kernels status {kernel_id}` failed (exit status {code}); the CLI said:\n{said}")
        state = match.group(1).upper()
        if state in _DONE:
            return
        if state in _FAILED:
            raise ValueError(
                f"the notebook run {target} ended with status {state} ({text.strip().splitlines()[-1]}); see its log: "
                f"kaggle kernels output {kernel_id} -p out/ (or the notebook's page on Kaggle)"
            )
        if time.monotonic() + poll > deadline:
            raise ValueError(
                f"{target} is still {state} after {timeout:.0f} s; check later with: kaggle kernels status"
            )
        time.sleep(poll)


def make_work(work: Path) -> None:
    """Make the kernel folder and its mark, unless it exists (then :func:`check_work` found the mark)."""
    if work.is_dir():
        return
    try:
        work.mkdir(parents=True)
        (work / WORK_MARKER).write_text(
            "Made by `python -m kernel_lib kaggle-push`: the kernel folder it pushes. kaggle-push rewrites "
            "kernel-metadata.json and the notebook here, and no folder without this file.\n"
        )
    except OSError as err:
        raise ValueError(
            f"--work {work}: cannot make the folder ({err.strerror or err}); pass a writable place"
        ) from None


def run(args: argparse.Namespace) -> int:
    check_inputs(args)
    bundle_id = f"{args.user}/{args.bundle_slug}"
    models_id = f"{args.user}/{args.models_slug}"
    kernel_id = f"{args.user}/{args.kernel_slug}"
    bundle_meta = dataset_metadata(args.bundle, bundle_id, "Sartorius offline bundle")
    models_meta = dataset_metadata(args.models, models_id, "Sartorius fold models")
    code_file = args.notebook.name
    kernel_meta = kernel_metadata(args, code_file)
    text = notebook_text(args.notebook, args.models_slug)
    writes = {
        args.bundle / "dataset-metadata.json": json.dumps(bundle_meta, indent=2) + "\n",
        args.models / "dataset-metadata.json": json.dumps(models_meta, indent=2) + "\n",
        args.work / "kernel-metadata.json": json.dumps(kernel_meta, indent=2) + "\n",
        args.work / code_file: text,
    }
    for path in writes:
        kind = file_kind(path)
        if kind not in (None, "missing"):
            raise ValueError(f"{path} is {kind}, not a regular file; it is never replaced: move it away")
    if args.dry_run:
        made = "" if args.work.exists() else f" (making and marking {args.work})"
        print(f"dry run: would write {', '.join(str(p) for p in writes)}{made}; kernel-metadata.json:")
        print(writes[args.work / "kernel-metadata.json"], end="")
    else:
        make_work(args.work)
        for path, content in writes.items():
            with atomic_output(path) as tmp:
                tmp.write_text(content)

    ship_dataset(args.bundle, bundle_id, args.notes, args.dry_run)
    ship_dataset(args.models, models_id, args.notes, args.dry_run)
    push = ["kernels", "push", "-p", str(args.work)]
    version: int | None = None
    if args.dry_run:
        print(show(push))
    else:
        _, output = run_kaggle(push)
        match = re.search(r"Kernel version (\d+) successfully", output)
        version = int(match.group(1)) if match else None
        if args.submit and version is None:
            raise ValueError("`kaggle kernels push` printed no version number; submit by hand with -v VERSION")
        print(f"pushed {kernel_id}" + (f" version {version}" if version else ""))
    if args.wait or args.submit:
        if args.dry_run:
            print(f'{show(["kernels", "status", kernel_id])}   # every {args.poll:.0f} s until "complete"')
        else:
            wait_for(kernel_id, version, args.timeout, args.poll)
            print(f"{kernel_id} version {version}: complete")
    if args.submit:
        submit = ["competitions", "submit", COMPETITION, "-f", "submission.csv", "-k", kernel_id]
        submit += ["-v", str(version) if version else "<pushed version>", "-m", args.message]
        if args.dry_run:
            print(show(submit))
        else:
            run_kaggle(submit)
            print(f"submitted {kernel_id} version {version}; the score: kaggle competitions submissions {COMPETITION}")
    return 0
