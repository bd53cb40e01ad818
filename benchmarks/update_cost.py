"""What a weekly log-reading catalog update costs against training from scratch (issue 29), as fresh processes.

On MovieLens-100K's streaming protocol (SPEC §2): the T1 data (every interaction before T1,
the items seen before T1) are written as `--data files` inputs, and in one run

    python -m tfrec_lm.train --data files --interactions t1.csv --items items_t1.csv ...
    python -m tfrec_lm.catalog --run RUN --items new_items.csv --interactions log.csv ...

are timed as whole processes (interpreter start, TensorFlow import, data reading, the
export and the publishing gate included), the update before the first, the middle and the
last weekly window, each with that week's catalog and its log of every interaction before
the window. Each update also records the stages its command reports (`time:`,
`tfrec_lm.catalog.update.STAGES`, in-process wall seconds) and the seconds before
`update_catalog` began (interpreter start, imports, argument parsing). The claim is the
ratio of each update's wall time to the training's, measured in the same run. The machine
should be otherwise idle.

    python benchmarks/update_cost.py                 # writes benchmarks/results/update_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import write_result  # noqa: E402

RESULT = "update_cost"
BAR = 0.05
"""Issue 29's bound: an update takes at most this share of a from-scratch training's wall time."""


def timed(command: list, log: Path) -> float:
    """Runs `command` as a fresh process (output to `log`); its wall seconds. Exits on failure.

    The files earlier commands wrote are flushed to disk first (`os.sync`), so that the kernel's
    writeback of a training's checkpoints does not run inside the next command's time.
    """
    os.sync()
    began = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    seconds = time.monotonic() - began
    if code:
        raise SystemExit(f"{' '.join(command)} failed ({code}); see {log}")
    return seconds


def stage_seconds(log: Path) -> tuple[dict, float]:
    """The catalog command's `time:` line (`CatalogUpdate.stages`): stage -> seconds, and their total."""
    line = next(line for line in log.read_text().splitlines() if line.startswith("time: "))
    stages = {name.replace(" ", "_"): float(value)
              for name, value in re.findall(r"([a-z][a-z ]*?) ([0-9.]+) s", line.split(" (of ")[0][len("time: "):])}
    return stages, float(re.search(r"\(of ([0-9.]+) s\)", line).group(1))


_EXIT = "from tfrec_lm.console import exit_at_once; exit_at_once(0)"  # as the catalog command ends
FLOOR = {
    "imports": "import tensorflow, tensorflow_recommenders, scann; " + _EXIT,
    "imports_and_encoder_architecture": (
        "import tfrec_lm.bert as b; import tensorflow_recommenders, scann; b.bert_architecture({encoder!r}); " + _EXIT),
    "imports_load_and_resave_export": (
        "import tempfile, tensorflow as tf, scann; m = tf.saved_model.load({export!r}); "
        "tf.saved_model.save(m, tempfile.mkdtemp() + '/v', signatures=dict(m.signatures), "
        "options=tf.saved_model.SaveOptions(namespace_whitelist=['Scann'])); " + _EXIT),
    "publishing_update": (
        "import tempfile, tensorflow as tf, tensorflow_recommenders, scann; tf.saved_model.load({text_encoder!r}); "
        "m = tf.saved_model.load({export!r}); tf.saved_model.load({export!r}); "
        "tf.saved_model.save(m, tempfile.mkdtemp() + '/v', signatures=dict(m.signatures), "
        "options=tf.saved_model.SaveOptions(namespace_whitelist=['Scann'])); " + _EXIT),
}
"""What `floor` times, each as `python -c`: the fixed cost of any update process. `publishing_update` is
what an update that encodes a new text and publishes through the gate pays before any work on the
catalog or the log: the imports, the run's exported text encoder loaded (`<run>/text_encoder`, which
the run's first update writes), the two exports the gate scores loaded, and one export saved; and,
as the catalog command, no interpreter teardown (`tfrec_lm.console.exit_at_once`).
`imports_and_encoder_architecture` is what the first update pays instead of loading that encoder:
transformers imported and the encoder's architecture built."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where data, runs and exports go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from new_items import items_csv
    from streaming import retrain_windows, stream_setup
    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.prepare import load_training_data
    from tfrec_lm.registry.model_versions import ModelVersions

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_update_cost_"))
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = load_training_data(TrainConfig.from_dict(PRESETS["cpu"]))
    setup = stream_setup(dataset)
    frame = dataset.interactions
    stamps = frame["timestamp"].to_numpy(np.int64)
    columns = ["user_id", "item_id", "timestamp", "rating"] if "rating" in frame else ["user_id", "item_id", "timestamp"]
    t1_log = workdir / "t1_interactions.csv"
    frame.loc[stamps < setup["t1"], columns].to_csv(t1_log, index=False)
    t1_items = items_csv(dataset.items[dataset.items["item_id"].isin(setup["known_ids"])], workdir / "t1_items.csv")
    run_dir, exports = workdir / "run", workdir / "exports"
    train_command = [sys.executable, "-m", "tfrec_lm.train", "--data", "files", "--interactions", str(t1_log),
                     "--items", str(t1_items), "--seed", str(args.seed), "--output-dir", str(run_dir),
                     "--export-base", str(exports), "--overwrite"]
    train_seconds = timed(train_command, workdir / "train.log")
    print(f"training from scratch: {train_seconds:.1f} s", flush=True)
    served = ModelVersions(exports, "tfrec_lm")
    trained_version = served.path(served.newest())
    updates = []
    for j in retrain_windows(len(setup["starts"])):
        start = setup["starts"][j]
        end = start + setup["window_seconds"]
        new_ids = setup["vocab"].ids[(setup["first_seen"] < end) & setup["is_new_item"]]
        items = items_csv(dataset.items[dataset.items["item_id"].isin(new_ids)], workdir / f"w{j:02d}_items.csv")
        log = workdir / f"w{j:02d}_log.csv"
        frame.loc[stamps < start, columns].to_csv(log, index=False)
        command = [sys.executable, "-m", "tfrec_lm.catalog", "--run", str(run_dir), "--items", str(items),
                   "--interactions", str(log), "--export-base", str(exports), "--publish", "always"]
        seconds = timed(command, workdir / f"update_w{j:02d}.log")
        stages, inside = stage_seconds(workdir / f"update_w{j:02d}.log")
        updates.append({"window": int(j), "new_items": int(len(new_ids)), "log_rows": int((stamps < start).sum()),
                        "seconds": seconds, "over_training": seconds / train_seconds,
                        "update_catalog_seconds": inside, "before_update_catalog_seconds": seconds - inside,
                        "stages": stages, "exported_the_encoder": "encoder_export" in stages})
        first = "; the run's first update: it exports the encoder" if "encoder_export" in stages else ""
        print(f"update before window {j} ({len(new_ids)} new items, {updates[-1]['log_rows']} log rows{first}): "
              f"{seconds:.1f} s = {100 * seconds / train_seconds:.1f}% of training", flush=True)
    floor = {}
    for name, code in FLOOR.items():
        code = code.format(encoder=TrainConfig.from_dict(PRESETS["cpu"]).encoder, export=str(trained_version),
                           text_encoder=str(run_dir / "text_encoder"))
        seconds = timed([sys.executable, "-c", f"import tfrec_lm; {code}"], workdir / f"floor_{name}.log")
        floor[name] = {"code": code, "seconds": seconds, "over_training": seconds / train_seconds}
        print(f"floor {name}: {seconds:.1f} s = {100 * seconds / train_seconds:.1f}% of training", flush=True)
    # Training writes the run's item encoder for the updates (`--export-text-encoder`): its share of the training.
    record = json.loads((run_dir / "metrics.json").read_text())
    payload = {"command": " ".join(["python", "benchmarks/update_cost.py", *(argv or sys.argv[1:])]),
               "train_command": " ".join(train_command[1:]), "train_seconds": train_seconds,
               "train_text_encoder_seconds": record.get("text_encoder_seconds"),
               "max_over_training_without_the_encoder_export": max(
                   u["seconds"] for u in updates) / (train_seconds - (record.get("text_encoder_seconds") or 0.0)),
               "updates": updates,
               "max_over_training": max(u["over_training"] for u in updates),
               "max_over_training_after_the_first": max(u["over_training"] for u in updates[1:]),
               "median_over_training": float(np.median([u["over_training"] for u in updates])),
               "floor": floor, "bar_seconds": BAR * train_seconds,
               "bar_left_after_publishing_floor": BAR * train_seconds - floor["publishing_update"]["seconds"]}
    path = write_result(RESULT, payload)
    print(f"bar {BAR:.0%} of training: {payload['bar_seconds']:.1f} s, of which the publishing floor leaves "
          f"{payload['bar_left_after_publishing_floor']:.1f} s -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
