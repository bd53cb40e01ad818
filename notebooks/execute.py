"""Executes notebooks/walkthrough.ipynb as committed (its default TINY mode) and saves it with its outputs.

    python notebooks/execute.py

The kernel (a fresh `python3` kernel, run by nbclient) imports this checkout's tfrec_lm and runs in a
new temporary folder, removed afterwards: the notebook's relative OUTPUT_DIR and EXPORT_BASE land there,
so nothing but the notebook itself is written into the checkout. The SHA-256 of the code cells' sources
is stored in the notebook's metadata (`tfrec_lm.code_sha256`); tests/test_notebook.py recomputes it, so
a code cell changed without re-executing the notebook fails the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().with_name("walkthrough.ipynb")
REPO = NOTEBOOK.parents[1]
METADATA_KEY = "tfrec_lm"
TIMEOUT_S = 600  # per cell


def code_hash(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the code cells' sources, in order (markdown and outputs are not part of it).

    Args:
        nb: NotebookNode.

    Returns:
        str. hex digest.
    """
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


def execute(nb: nbformat.NotebookNode, workdir: str | Path, timeout: int = TIMEOUT_S) -> nbformat.NotebookNode:
    """Runs every cell of `nb` in place in a fresh kernel whose working directory is `workdir`.

    The kernel imports this checkout's tfrec_lm (PYTHONPATH) and uses tf-keras (TF_USE_LEGACY_KERAS=1).
    No per-cell timing metadata is recorded, so re-executing unchanged code changes only what the
    code prints.

    Args:
        nb: NotebookNode. executed in place.
        workdir: str | Path. the kernel's working directory.
        timeout: int. seconds per cell.

    Returns:
        NotebookNode. `nb`.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the message holds it and its traceback).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TF_USE_LEGACY_KERAS"] = "1"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=NOTEBOOK, help="default: %(default)s")
    args = parser.parse_args(argv)

    nb = nbformat.read(args.notebook, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfrec_lm-notebook-") as workdir:
        execute(nb, workdir)
    seconds = time.perf_counter() - start
    nb.metadata[METADATA_KEY] = {"code_sha256": code_hash(nb)}
    nbformat.validate(nb)
    nbformat.write(nb, args.notebook)
    print(f"executed {args.notebook} in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
