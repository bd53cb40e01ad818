"""`ExportedTextEncoder`: a run's frozen item encoder as a SavedModel, and the catalog updates that use it.

The encoder read back encodes as the `BertTextEncoder` it was written from, holds no weights
of its own (a checkpoint restore neither expects nor reads them) and round-trips its config.
Training (`--export-text-encoder`, on by default) exports the encoder to `<run>/text_encoder/`;
a catalog update (no encoder factory given) loads it, publishes the vectors the BERT restored
from the checkpoint gives and, as a fresh `python -m tfrec_lm.catalog` process, imports no
module of transformers. A folder written from another checkpoint is not used: the first update
builds the BERT and writes the folder again.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import tiny_config
from tfrec_lm.bert import tiny_bert
from tfrec_lm.catalog.table import read_text_vectors
from tfrec_lm.catalog.update import update_catalog
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.layers.exported_text_encoder import (META_FILE, ExportedTextEncoder, checkpoint_digest,
                                                   exported_digest, save_text_encoder)
from tfrec_lm.registry.model_versions import ModelVersions
from tfrec_lm.text import tokenize_items
from tfrec_lm.training import train


@pytest.fixture(scope="module")
def exported(tokenizer, synthetic, tmp_path_factory):
    """A frozen tiny encoder, its token rows and the folder it was exported to."""
    encoder = BertTextEncoder(tiny_bert(tokenizer.vocab_size, seed=3), finetune="frozen")
    rows = tokenize_items(list(synthetic.items["text"]), tokenizer, max_item_tokens=8).with_special_tokens()
    path = save_text_encoder(encoder, tokenizer, tmp_path_factory.mktemp("exported") / "text_encoder", "d1")
    return encoder, rows, path


def test_the_exported_encoder_encodes_as_the_encoder_it_was_written_from(exported, tokenizer):
    encoder, rows, path = exported
    loaded = ExportedTextEncoder(path)
    assert loaded.hidden_size == encoder.hidden_size and loaded.caches_text and loaded.is_frozen
    assert loaded.weights == []  # the SavedModel's variables are not the layer's: no checkpoint reads them
    expected = encoder.encode_table(rows, batch_size=16)
    np.testing.assert_allclose(loaded.encode_table(rows, batch_size=16), expected, atol=1e-5)
    np.testing.assert_allclose(loaded(tf.constant(rows[1:3]), tf.constant((rows[1:3] != 0).astype(np.int32))),
                               expected[1:3], atol=1e-5)
    assert exported_digest(path) == "d1"
    again = tokenize_items(["red sneakers 40"], loaded.tokenizer(), 8)
    np.testing.assert_array_equal(again.token_ids, tokenize_items(["red sneakers 40"], tokenizer, 8).token_ids)


def test_the_exported_encoder_round_trips_its_config(exported):
    _, rows, path = exported
    loaded = ExportedTextEncoder(path, name="item_text_encoder")
    config = loaded.get_config()
    copy = ExportedTextEncoder.from_config(config)
    assert copy.get_config() == config and copy.name == "item_text_encoder"
    np.testing.assert_array_equal(copy.encode_table(rows[:5]), loaded.encode_table(rows[:5]))


def test_a_folder_of_another_format_is_not_read(exported, tmp_path):
    _, _, path = exported
    meta = json.loads((path / META_FILE).read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / META_FILE).write_text(json.dumps({**meta, "format": 999}))
    assert exported_digest(other) is None and exported_digest(tmp_path / "absent") is None
    with pytest.raises(ValueError, match="format 999"):
        ExportedTextEncoder(other)


def test_the_checkpoint_digest_follows_the_weights_and_the_precision(tmp_path):
    (tmp_path / "ckpt.index").write_bytes(b"one")
    first = checkpoint_digest(str(tmp_path / "ckpt"), "off")
    assert checkpoint_digest(str(tmp_path / "ckpt"), "bfloat16") != first
    (tmp_path / "ckpt.index").write_bytes(b"two")
    assert checkpoint_digest(str(tmp_path / "ckpt"), "off") != first


@pytest.fixture(scope="module")
def encoder_run(synthetic, tokenizer, tmp_path_factory):
    """A tiny run whose `--encoder` is a folder (the tiny BERT's config and tokenizer), exported as version 1."""
    root = tmp_path_factory.mktemp("encoder_run")
    folder = root / "encoder"
    tokenizer.save_pretrained(str(folder))
    tiny_bert(tokenizer.vocab_size, seed=0).config.save_pretrained(str(folder))
    config = tiny_config(root, export=True, index="brute-force", top_k=5, epochs=1, dropout=0.0,
                         encoder=str(folder))
    train(config, dataset=synthetic, encoder_factory=lambda: (tiny_bert(tokenizer.vocab_size, seed=0), tokenizer))
    return root


def new_items(path):
    pd.DataFrame([("new-a", "red sneakers 40", "sneakers"), ("new-b", "blue novels 41", "novels")],
                 columns=["item_id", "title", "genres"]).to_csv(path, index=False)
    return path


def test_training_exports_the_encoder_and_an_update_uses_it_with_the_same_vectors(encoder_run, tokenizer, tmp_path):
    run = encoder_run / "run"
    digest = checkpoint_digest(str(run / "checkpoints" / "best.weights"), "float32")
    assert exported_digest(run / "text_encoder") == digest  # written by training (--export-text-encoder)
    record = json.loads((run / "metrics.json").read_text())
    assert record["text_encoder_seconds"] > 0
    items = new_items(tmp_path / "items.csv")
    fast = update_catalog(run, items_path=items, export_base=str(tmp_path / "a"))
    assert "encoder_export" not in fast.stages and fast.encoded == 2
    # The same update building the BERT, its weights restored from the checkpoint.
    built = update_catalog(run, items_path=items, export_base=str(tmp_path / "b"),
                           encoder_factory=lambda: (tiny_bert(tokenizer.vocab_size, seed=11), tokenizer))
    a = read_text_vectors(ModelVersions(tmp_path / "a", "tfrec_lm").text_vectors_path(1))
    b = read_text_vectors(ModelVersions(tmp_path / "b", "tfrec_lm").text_vectors_path(1))
    assert set(a) == set(b) and {item for item, _ in a} == {"new-a", "new-b"}
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)
    np.testing.assert_allclose(tf.saved_model.load(str(fast.export_path)).item_embeddings.numpy(),
                               tf.saved_model.load(str(built.export_path)).item_embeddings.numpy(), atol=1e-5)


def test_without_a_current_export_the_first_update_writes_it(encoder_run, tmp_path):
    """A folder written from another checkpoint (an earlier training of this --output-dir) is not used."""
    run = encoder_run / "run"
    digest = exported_digest(run / "text_encoder")
    meta = json.loads((run / "text_encoder" / META_FILE).read_text())
    (run / "text_encoder" / META_FILE).write_text(json.dumps({**meta, "digest": "another checkpoint"}))
    items = new_items(tmp_path / "items.csv")
    first = update_catalog(run, items_path=items, export_base=str(tmp_path / "a"))
    assert "encoder_export" in first.stages and exported_digest(run / "text_encoder") == digest
    second = update_catalog(run, items_path=items, export_base=str(tmp_path / "b"))
    assert "encoder_export" not in second.stages


def test_an_update_with_the_exported_encoder_imports_no_transformers(encoder_run, tmp_path):
    run = encoder_run / "run"
    items = new_items(tmp_path / "items.csv")
    assert exported_digest(run / "text_encoder") is not None
    base = tmp_path / "exports"
    answer = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfrec_lm.catalog", "--run", str(run),
                             "--items", str(items), "--export-base", str(base), "--publish", "always"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    assert answer.returncode == 0, answer.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in answer.stderr.splitlines() if line.startswith("import time:")]
    assert "tensorflow" in imported  # the import log is complete
    assert not [name for name in imported if name.split(".")[0] == "transformers"]
    assert "export:" in answer.stdout and "encoder export" not in answer.stdout
    served = tf.saved_model.load(str(base / "tfrec_lm" / "1")).signatures["serving_default"]
    out = served(history_item_ids=tf.constant([["new-a", "new-b"]]), history_timestamps=tf.zeros([1, 2], tf.int64))
    assert out["item_ids"].shape == (1, 5)
