"""`ExportedTextEncoder`: a frozen item text encoder read back from its own SavedModel, without transformers.

A catalog update encodes a few new item texts with the run's frozen encoder. Building that
encoder means importing transformers and constructing a `TFBertModel` (2-4 s on a 2-core
CPU, more than the encoding itself), and reading its weights from the run's checkpoint. Training
(`--export-text-encoder`; else a run's first update) therefore writes the encoder once, as a
SavedModel of one function and its variables (`save_text_encoder`, `<run>/text_encoder/`): the
mean-pooled `BertTextEncoder` call, with the tokenizer's own `tokenizer.json` beside it. Updates load it (about half
a second) and tokenize with the `tokenizers` library (`tfrec_lm.saved_tokenizer`); they never
import transformers.

The folder records the digest of the checkpoint it was written from (`checkpoint_digest`: its
`.index` file, which holds every tensor's CRC32C, and the run's precision), so a folder left by
an earlier training of the same `--output-dir` is never used for a later one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfrec_lm.layers.bert_text_encoder import encode_in_batches

logger = logging.getLogger(__name__)

FORMAT = 1
"""The folder's layout and the function's signature; a folder of another format is not read."""
META_FILE = "tfrec_lm_text_encoder.json"
TOKENIZER_FILE = "tokenizer.json"


def checkpoint_digest(checkpoint: str, precision: str) -> str:
    """What the exported encoder's weights depend on: the checkpoint and the precision it computes in.

    Args:
        checkpoint: str. the checkpoint prefix (`<run>/checkpoints/best.weights`); its `.index`
            file lists every tensor with its CRC32C, so it changes with any weight.
        precision: str. `--mixed-precision` (bfloat16 computations give other vectors).

    Returns:
        str. 32 hex digits.
    """
    digest = hashlib.sha256(f"format {FORMAT}\nprecision {precision}\n".encode())
    digest.update(Path(f"{checkpoint}.index").read_bytes())
    return digest.hexdigest()[:32]


def save_text_encoder(encoder, tokenizer, path, digest: str) -> Path:
    """Writes a frozen `BertTextEncoder` and its tokenizer as a folder `ExportedTextEncoder` reads.

    The folder appears whole or not at all (written beside it, then renamed); an existing one is replaced.

    Args:
        encoder: tfrec_lm.layers.BertTextEncoder. the frozen item encoder, weights loaded.
        tokenizer: transformers.PreTrainedTokenizerFast. its tokenizer (`backend_tokenizer` is saved).
        path: str | Path. the folder (`<run>/text_encoder`).
        digest: str. `checkpoint_digest` of the weights.

    Returns:
        Path. the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec])
    def encode(input_ids, attention_mask):
        return tf.cast(encoder.call(input_ids, attention_mask, training=False), tf.float32)

    module = tf.Module()
    module.weights = list(encoder.weights)  # the variables only: no Keras object graph to restore on load
    module.encode = encode
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        tf.saved_model.save(module, str(staging), signatures={"serving_default": encode})
        tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
        meta = {"format": FORMAT, "digest": digest, "hidden_size": int(encoder.hidden_size),
                "cls_id": int(tokenizer.cls_token_id), "sep_id": int(tokenizer.sep_token_id),
                "pad_id": int(tokenizer.pad_token_id or 0)}
        (staging / META_FILE).write_text(json.dumps(meta, indent=1))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def try_save_text_encoder(encoder, tokenizer, path, digest: str) -> Optional[float]:
    """`save_text_encoder` where a failure costs only speed: it is logged as a warning, never raised.

    Training calls it after its checkpoint (`--export-text-encoder`), and a catalog update of a run
    without a current folder calls it after publishing. Without the folder, updates build the BERT
    and read its weights from the checkpoint, as before the export existed.

    Args:
        encoder: tfrec_lm.layers.BertTextEncoder. the frozen item encoder, weights loaded.
        tokenizer: transformers.PreTrainedTokenizerFast. its tokenizer.
        path: str | Path. the folder (`<run>/text_encoder`).
        digest: str. `checkpoint_digest` of the weights.

    Returns:
        float or None. the seconds it took (None: nothing written).
    """
    began = time.monotonic()
    try:
        save_text_encoder(encoder, tokenizer, path, digest)
    except (OSError, ValueError, tf.errors.OpError) as error:
        logger.warning("could not export the item encoder to %s (%s); catalog updates build it from the "
                       "checkpoint until one exports it", path, error)
        return None
    return time.monotonic() - began


def exported_digest(path) -> Optional[str]:
    """The checkpoint digest an exported encoder folder was written from (None: no readable folder of this format).

    Args:
        path: str | Path. the folder.

    Returns:
        str or None.
    """
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta.get("digest") if meta.get("format") == FORMAT else None


class _Untracked:
    """Holds the loaded SavedModel out of Keras's tracking: its variables are not this layer's weights,
    so a checkpoint restore neither expects nor reads them."""

    def __init__(self, loaded):
        self.loaded = loaded


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class ExportedTextEncoder(tf.keras.layers.Layer):
    """A frozen text encoder loaded from the folder `save_text_encoder` wrote.

    It stands in for a frozen `BertTextEncoder` where an item tower only needs new texts encoded
    (a catalog update): the same properties, `call` and `encode_table`, and no trainable or
    checkpointed weights.

    Args:
        path: str | Path. the folder.

    Call args:
        input_ids: tf.Tensor int32. [B, L] word-piece ids.
        attention_mask: tf.Tensor int32. [B, L] 1 for real tokens.

    Returns:
        tf.Tensor float32. [B, hidden_size] mean-pooled last hidden states.
    """

    finetune = "frozen"
    is_frozen = True
    caches_text = True
    trainable_layers = 0

    def __init__(self, path, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.path = Path(path)
        meta = json.loads((self.path / META_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: an exported text encoder of format {meta.get('format')}, "
                             f"this version reads {FORMAT}")
        self.meta = meta
        self._exported = _Untracked(tf.saved_model.load(str(self.path)))

    @property
    def hidden_size(self) -> int:
        return int(self.meta["hidden_size"])

    def tokenizer(self):
        """The tokenizer saved beside the encoder. tfrec_lm.saved_tokenizer.SavedTokenizer."""
        from tfrec_lm.saved_tokenizer import SavedTokenizer

        return SavedTokenizer(self.path / TOKENIZER_FILE, cls_id=self.meta["cls_id"], sep_id=self.meta["sep_id"],
                              pad_id=self.meta["pad_id"])

    def call(self, input_ids, attention_mask, training=False):
        return self._exported.loaded.encode(tf.cast(input_ids, tf.int32), tf.cast(attention_mask, tf.int32))

    def encode_table(self, token_rows: np.ndarray, pad_id: int = 0, batch_size: int = 64,
                     verbose: int = 0) -> np.ndarray:
        """Encodes many rows of token ids (`BertTextEncoder.encode_table`). np.ndarray float32 [N, hidden_size]."""
        return encode_in_batches(self.call, token_rows, pad_id=pad_id, batch_size=batch_size, verbose=verbose)

    def get_config(self):
        config = super().get_config()
        config.update({"path": str(self.path)})
        return config
