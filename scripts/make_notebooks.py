"""Write the Kaggle notebooks notebooks/*.ipynb from their sources notebooks/*.py.

Each notebook is kept as a jupytext "percent" script (``# %% [markdown]`` and ``# %%``
cells), a plain Python file that ruff lints and formats like the rest of the tree. This
script converts each one with jupytext into the .ipynb that Kaggle runs: no outputs, no
execution counts, stable cell ids (cell-0, cell-1, ...), the kernelspec and nothing
else in the notebook metadata, so that regenerating gives the same file.

Run ``python scripts/make_notebooks.py`` after editing a notebook's .py; ``--check``
only compares and exits 1 when a committed .ipynb differs (tests run it). Both notebooks
start with the same offline install cell (it finds and runs the bundle dataset's
kernel_lib_bootstrap.py). It is written once, as the inference notebook's first code
cell; the training notebook's source holds a placeholder cell
(:data:`INSTALL_PLACEHOLDER`) that this script replaces with it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = (NOTEBOOKS / "sartorius-inference.py", NOTEBOOKS / "sartorius-train.py")
"""The percent scripts; each gives the .ipynb of the same name beside it."""
COMMAND = "python scripts/make_notebooks.py"
INSTALL_PLACEHOLDER = "# 1. Install detectron2 and kernel_lib: the inference notebook's install cell"
"""How the placeholder cell of a notebook other than the first starts: it becomes the
first notebook's first code cell (the offline install)."""
METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def build(source: Path) -> nbformat.NotebookNode:
    """The notebook of one percent script, without outputs or jupytext metadata."""
    parsed = jupytext.read(source, fmt="py:percent")
    make = {
        "markdown": nbformat.v4.new_markdown_cell,
        "code": nbformat.v4.new_code_cell,
        "raw": nbformat.v4.new_raw_cell,
    }
    nb = nbformat.v4.new_notebook()
    nb.cells = [make[cell.cell_type](cell.source, metadata=dict(cell.metadata)) for cell in parsed.cells]
    for number, cell in enumerate(nb.cells):
        cell.id = f"cell-{number}"
    nb.metadata = METADATA
    nbformat.validate(nb)
    return nb


def first_code_cell(nb: nbformat.NotebookNode) -> str:
    return next((cell.source for cell in nb.cells if cell.cell_type == "code"), "")


def with_install_cell(nb: nbformat.NotebookNode, install: str, source: Path) -> nbformat.NotebookNode:
    """``nb`` with its placeholder cell's source replaced by ``install``.

    Raises:
        ValueError: ``source`` has no placeholder cell, or more than one.
    """
    places = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.startswith(INSTALL_PLACEHOLDER)]
    if len(places) != 1:
        raise ValueError(
            f"{source}: expected one code cell starting {INSTALL_PLACEHOLDER!r} (where the install cell goes), "
            f"found {len(places)}"
        )
    places[0].source = install
    return nb


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a notebook is out of date")
    args = parser.parse_args(argv)
    first = build(SOURCES[0])
    install = first_code_cell(first)
    notebooks = {SOURCES[0]: first}
    for source in SOURCES[1:]:
        try:
            notebooks[source] = with_install_cell(build(source), install, source)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    stale = []
    for source, nb in notebooks.items():
        path = source.with_suffix(".ipynb")
        text = nbformat.writes(nb) + "\n"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
            continue
        path.write_text(text)
        print(path)
    for path in stale:
        print(f"{path} is out of date (its source is {path.with_suffix('.py').name}): run {COMMAND}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
