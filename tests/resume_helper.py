"""Trains the tiny test config in its own process, for the resume tests (`tests/test_resume.py`).

`python tests/resume_helper.py OUT_DIR [--steps-per-epoch N] [--backup-steps N] [--dropout P] [--id-dropout P]`
trains the `tiny` preset (dropout and ID dropout 0 unless given: their random draws are not
part of a backup) on the synthetic data with a tiny random BERT (the unit tests'
`synthetic`, `tokenizer` and `encoder_factory`), outputs under `OUT_DIR/run`, and prints
one JSON line: the test metrics, the validation NDCG@10 by epoch, the `fit` calls and
epochs they ran, `reused` (a finished run returned), `start` (the backup position the run
started from, or None) and the training losses.

With `TFREC_LM_TEST_KILL_AFTER_BACKUP=K` in the environment the process SIGKILLs itself
right after the K-th backup (a step or an epoch-end backup) is on disk: a run that dies
at a known point, to be re-run with the same command.
"""

import tfrec_lm  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path

NUM_USERS = 60


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--backup-steps", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--id-dropout", type=float, default=0.0)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from tfrec_lm.bert import tiny_bert, tiny_tokenizer
    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.synthetic import synthetic_migration
    from tfrec_lm import fitting
    from tfrec_lm.training import train

    dataset, _ = synthetic_migration(num_users=NUM_USERS)
    words = re.findall(r"[a-z0-9]+", " ".join(dataset.items["text"]).lower())
    tokenizer = tiny_tokenizer(words, args.out / "tokenizer")
    values = dict(PRESETS["tiny"])
    values.update(output_dir=str(args.out / "run"), export_base=str(args.out / "exports"), export=False,
                  epochs=args.epochs, patience=args.epochs, batch_size=16, dropout=args.dropout,
                  id_dropout=args.id_dropout,
                  steps_per_epoch=args.steps_per_epoch)
    if "backup_steps" in {f for f in TrainConfig.__dataclass_fields__}:
        values["backup_steps"] = args.backup_steps
    config = TrainConfig(**values).validate()

    epochs_trained = []
    original_fit = tf.keras.Model.fit

    def counting_fit(self, *a, **k):
        history = original_fit(self, *a, **k)
        epochs_trained.append(len(history.epoch))
        return history

    tf.keras.Model.fit = counting_fit
    kill_after = int(os.environ.get("TFREC_LM_TEST_KILL_AFTER_BACKUP", "0"))
    backup_class = getattr(fitting, "ResumableBackup", None)
    if kill_after and backup_class is not None:
        original_backup = backup_class._backup
        count = [0]

        def killing_backup(self, *a, **k):
            original_backup(self, *a, **k)
            count[0] += 1
            if count[0] >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        backup_class._backup = killing_backup
    starts = []
    position = getattr(fitting, "backup_position", None)
    if position is not None:
        def recording_position(*a, **k):
            starts.append(position(*a, **k))
            return starts[-1]

        fitting.backup_position = recording_position
    result = train(config, dataset=dataset, encoder_factory=lambda: (tiny_bert(tokenizer.vocab_size, seed=0), tokenizer))
    print(json.dumps({"test": result.metrics["model"], "validation_ndcg": result.validation_ndcg,
                      "fit_calls": len(epochs_trained), "epochs_trained": sum(epochs_trained),
                      "reused": bool(getattr(result, "reused", False)), "start": starts[0] if starts else None,
                      "train_loss": result.history.get("loss", []), "train_examples": len(result.split.train.target)}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
