"""Runs notebooks/walkthrough.ipynb end to end in TINY mode (synthetic data, tiny BERT, no network).

The `parameters` cell is replaced (as papermill would) so that every output lands
under pytest's `tmp_path`; the notebook is executed with nbclient in a fresh
`python3` kernel whose working directory is `tmp_path`.
"""

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
K = 10  # TrainConfig.top_k default, the K of serving_default


def _text(outputs) -> str:
    parts = []
    for output in outputs:
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif output.get("output_type") in ("execute_result", "display_data"):
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _line(text: str, prefix: str):
    """The JSON value after `prefix` on the line that starts with it."""
    match = re.search(rf"^{re.escape(prefix)}\s*(.*)$", text, re.MULTILINE)
    assert match, f"no line starting with {prefix!r} in:\n{text}"
    return json.loads(match.group(1))


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert "parameters" in nb.cells[0].metadata.get("tags", []), "first cell must be tagged `parameters`"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit the notebook with outputs cleared"


def test_walkthrough_runs_tiny(tmp_path, monkeypatch):
    # The kernel imports this checkout's tfrec_lm (as the CLI tests' subprocesses do), not
    # whichever copy happens to be installed.
    repo = str(NOTEBOOK.parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source = "\n".join([
        "TINY = True",
        "EPOCHS = 1",
        f"OUTPUT_DIR = {str(tmp_path / 'runs')!r}",
        f"EXPORT_BASE = {str(tmp_path / 'exports')!r}",
    ])

    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as error:  # the message holds the cell and its traceback
        pytest.fail(f"notebook cell failed:\n{error}")
    finally:
        nbformat.write(nb, tmp_path / "walkthrough.executed.ipynb")

    for cell in nb.cells:
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.get("output_type") == "error"]
            assert not errors, f"cell errored:\n{cell.source}\n{errors}"

    versions = [p for p in (tmp_path / "exports" / "tfrec_lm").iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(versions) == 1, versions
    assert (versions[0] / "saved_model.pb").is_file()
    assert (tmp_path / "runs" / "metrics.json").is_file()

    query = [c for c in nb.cells if c.cell_type == "code" and 'print("recommended:"' in c.source]
    assert len(query) == 1, "the query cell must print a `recommended: [...]` line"
    text = _text(query[0].outputs)
    history = _line(text, "history:")
    recommended = _line(text, "recommended:")
    assert len(recommended) == K
    assert len(set(recommended)) == K
    # synthetic_migration item ids: the category's first three letters and a number
    assert all(re.fullmatch(r"(sne|nov|cam|gui)\d+", item) for item in recommended), recommended
    assert history and not set(history) & set(recommended), "history items must not be recommended"

    outputs = "\n".join(_text(c.outputs) for c in nb.cells if c.cell_type == "code")
    for name in ("serving_default", "rank"):
        assert f"signature {name!r}" in outputs
    rest = [json.loads(line) for line in outputs.splitlines() if line.startswith('{"signature_name"')]
    assert len(rest) == 1
    assert rest[0]["signature_name"] == "serving_default"
    # The README's rule: every row starts with one padding column ("" / 0), then the history.
    row, stamps = rest[0]["inputs"]["history_item_ids"][0], rest[0]["inputs"]["history_timestamps"][0]
    assert row[0] == "" and stamps[0] == 0
    assert row[1: len(history) + 1] == history

    # tfrec_lm.Recommender, loaded from the run folder, answers as serving_default did.
    in_process = [c for c in nb.cells if c.cell_type == "code" and 'print("in-process:"' in c.source]
    assert len(in_process) == 1
    assert _line(_text(in_process[0].outputs), "in-process:") == recommended[:5]
