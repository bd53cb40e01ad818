"""notebooks/walkthrough.ipynb: committed executed, and run end to end in TINY mode (synthetic data, tiny BERT, no network).

The notebook is committed with its outputs, executed in its default TINY mode by
`python notebooks/execute.py`, which records a hash of the code cells in the notebook's metadata:
`test_committed_notebook_is_executed` checks those outputs and that hash, so a code cell changed
without re-executing the notebook fails here.

`test_walkthrough_runs_tiny` executes a fresh copy (never the committed file) with the
`parameters` cell replaced (as papermill would) so that every output lands under pytest's
`tmp_path`, in a fresh `python3` kernel whose working directory is `tmp_path` (execute.py's setup).
"""

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
K = 10  # TrainConfig.top_k default, the K of serving_default


def _load_executor():
    spec = importlib.util.spec_from_file_location("walkthrough_execute", NOTEBOOK.with_name("execute.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


executor = _load_executor()


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


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


def _parameters(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged `parameters`"
    return cells[0]


def _check_outputs(nb) -> None:
    """What an executed TINY walkthrough shows: no errors, one PNG plot, and the query cells' answers."""
    for cell in _code(nb):
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        assert not errors, f"cell errored:\n{cell.source}\n{errors}"
    assert any("image/png" in o.get("data", {}) for c in _code(nb) for o in c.outputs), "no image/png output (plot)"

    query = [c for c in _code(nb) if 'print("recommended:"' in c.source]
    assert len(query) == 1, "the query cell must print a `recommended: [...]` line"
    text = _text(query[0].outputs)
    history = _line(text, "history:")
    recommended = _line(text, "recommended:")
    assert len(recommended) == K
    assert len(set(recommended)) == K
    # synthetic_migration item ids: the category's first three letters and a number
    assert all(re.fullmatch(r"(sne|nov|cam|gui)\d+", item) for item in recommended), recommended
    assert history and not set(history) & set(recommended), "history items must not be recommended"

    outputs = "\n".join(_text(c.outputs) for c in _code(nb))
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
    in_process = [c for c in _code(nb) if 'print("in-process:"' in c.source]
    assert len(in_process) == 1
    assert _line(_text(in_process[0].outputs), "in-process:") == recommended[:5]


def test_committed_notebook_is_executed():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = _code(nb)
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged `parameters`"
    assert _parameters(nb) is code[0]
    assert re.search(r"^TINY = True\b", code[0].source, re.MULTILINE), "the committed default must be TINY = True"

    recorded = nb.metadata.get(executor.METADATA_KEY, {}).get("code_sha256")
    assert recorded == executor.code_hash(nb), (
        "the committed outputs are not those of the current code cells: run `python notebooks/execute.py`")
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "execute the notebook top to bottom"
    # Every code cell but the parameters cell (assignments only) prints or displays something.
    silent = [c.source.splitlines()[0] for c in code[1:] if not c.outputs]
    assert not silent, f"code cells without outputs: {silent}"
    _check_outputs(nb)


def test_walkthrough_runs_tiny(tmp_path):
    committed = nbformat.read(NOTEBOOK, as_version=4)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _parameters(nb).source = "\n".join([
        "TINY = True",
        "EPOCHS = 1",
        f"OUTPUT_DIR = {str(tmp_path / 'runs')!r}",
        f"EXPORT_BASE = {str(tmp_path / 'exports')!r}",
    ])

    try:
        executor.execute(nb, tmp_path)  # imports this checkout's tfrec_lm, whichever copy is installed
    except CellExecutionError as error:  # the message holds the cell and its traceback
        pytest.fail(f"notebook cell failed:\n{error}")
    finally:
        nbformat.write(nb, tmp_path / "walkthrough.executed.ipynb")

    _check_outputs(nb)
    # The committed notebook has outputs exactly where a fresh run produces them.
    assert [bool(c.outputs) for c in _code(nb)] == [bool(c.outputs) for c in _code(committed)]

    versions = [p for p in (tmp_path / "exports" / "tfrec_lm").iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(versions) == 1, versions
    assert (versions[0] / "saved_model.pb").is_file()
    assert (tmp_path / "runs" / "metrics.json").is_file()
