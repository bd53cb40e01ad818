"""Loading BERT-family encoders in TensorFlow, plus tiny random ones for unit tests.

``load_bert`` resolves a spec with ``tfrec_lm.assets.encoder_dir`` and builds a
``TFBertModel``. Checkpoints in ``tf_model.h5`` go through ``from_pretrained``; PyTorch
checkpoints (``model.safetensors``, ``pytorch_model.bin``) are converted here because
``TFBertModel.from_pretrained`` on a safetensors-only folder fails in transformers 4.57.
Every TF weight is checked to have been loaded from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import string
from pathlib import Path
from typing import Iterable

import tfrec_lm  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf
from transformers import BertConfig, BertTokenizerFast, TFBertModel

from tfrec_lm.assets import encoder_dir
from tfrec_lm.errors import AssetError

logger = logging.getLogger(__name__)

__all__ = [
    "BERT_MODEL_TYPES",
    "SPECIAL_TOKENS",
    "load_bert",
    "tiny_bert",
    "tiny_tokenizer",
    "write_vocab",
]

# ``model_type`` values in config.json whose checkpoints TFBertModel can hold.
BERT_MODEL_TYPES = frozenset({"bert"})

# WordPiece special tokens, in vocabulary order ([PAD] has id 0).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Checkpoint keys that are buffers, not weights; never reported as unexpected.
_IGNORED_CHECKPOINT_KEYS = ("embeddings.position_ids",)


def _read_model_type(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AssetError(f"cannot read {folder / 'config.json'}: {error}") from error
    model_type = config.get("model_type")
    if model_type not in BERT_MODEL_TYPES:
        raise AssetError(
            f"encoder in {folder} has model_type {model_type!r}; only BERT-family encoders "
            f"(model_type in {sorted(BERT_MODEL_TYPES)}) can be loaded as TFBertModel"
        )
    return model_type


def _load_safetensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(folder / shard)))
    return state


def _load_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise AssetError(
            f"{path} is a PyTorch pickle checkpoint and torch is not installed; "
            "install torch or provide model.safetensors / tf_model.h5"
        ) from None
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    return {
        key: (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        for key, value in raw.items()
    }


def _strip_to_base_model(state: dict[str, np.ndarray], source: Path) -> dict[str, np.ndarray]:
    """Keep the base-model tensors, keyed as in ``BertModel`` (``embeddings.…``).

    Checkpoints of ``BertModel`` have bare keys; those of ``BertFor…`` heads prefix them
    with ``bert.``; sentence-transformers exports may use other prefixes. The prefix is
    found from the word-embedding key, and keys outside it (heads) are dropped.
    """
    anchor = "embeddings.word_embeddings.weight"
    prefixes = [key[: -len(anchor)] for key in state if key.endswith(anchor)]
    if len(prefixes) != 1:
        raise AssetError(
            f"{source} does not look like a BERT checkpoint: expected one '*{anchor}' key, "
            f"found {len(prefixes)}"
        )
    prefix = prefixes[0]
    base = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    dropped = sorted(key for key in state if not key.startswith(prefix))
    if prefix:
        logger.info("Checkpoint keys carry the prefix %r; stripped it", prefix)
    if dropped:
        logger.info("Ignoring %d checkpoint tensors outside the base model (e.g. %s)",
                    len(dropped), ", ".join(dropped[:3]))
    return base


def _load_pytorch_checkpoint(folder: Path, config: BertConfig) -> TFBertModel:
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        source = folder / "model.safetensors"
        state = _load_safetensors(folder)
    else:
        source = folder / "pytorch_model.bin"
        state = _load_torch_bin(source)
    state = _strip_to_base_model(state, source)
    has_pooler = any(key.startswith("pooler.") for key in state)

    model = _built(config)

    # Fill every weight with NaN so that a weight the loader does not assign is detectable
    # exactly (comparing against the random init would miss legitimately equal values).
    pooler_init = {}
    for weight in model.weights:
        if "/pooler/" in weight.name and not has_pooler:
            pooler_init[weight.name] = weight.numpy()
        weight.assign(tf.fill(weight.shape, tf.constant(np.nan, dtype=weight.dtype)))

    try:
        _, info = load_pytorch_state_dict_in_tf2_model(
            model,
            state,
            tf_inputs=model.dummy_inputs,
            allow_missing_keys=True,
            output_loading_info=True,
            skip_logger_warnings=True,
        )
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        raise AssetError(f"checkpoint {source} does not fit the config in {folder}: {error}") from error

    unloaded = [w for w in model.weights if bool(tf.reduce_any(tf.math.is_nan(w)))]
    missing = []
    for weight in unloaded:
        if weight.name in pooler_init:
            weight.assign(pooler_init[weight.name])
        else:
            missing.append(weight.name)
    if pooler_init:
        logger.warning("Checkpoint %s has no pooler weights; the pooler stays randomly initialised "
                       "(mean pooling does not use it)", source)
    if missing:
        logger.error("TF weights not loaded from %s: %s", source, missing)
        raise AssetError(
            f"{len(missing)} TF weights were not found (or are NaN) in checkpoint {source}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    unexpected = sorted(k for k in info["unexpected_keys"] if k not in _IGNORED_CHECKPOINT_KEYS)
    if unexpected:
        logger.warning("Checkpoint tensors not used by TFBertModel: %s", unexpected)
    logger.info("Loaded %d TF weights from %s", len(model.weights), source)
    return model


def _encoder_config(spec: str | os.PathLike) -> tuple[Path, BertConfig]:
    """The encoder folder of `spec` and its BERT config (AssetError: unresolvable, or not BERT-family)."""
    folder = encoder_dir(spec)
    _read_model_type(folder)
    return folder, BertConfig.from_pretrained(str(folder))


def _built(config: BertConfig) -> TFBertModel:
    """A TFBertModel of `config` with its weights created (random)."""
    model = TFBertModel(config)
    model(model.dummy_inputs, training=False)  # build the weights
    return model


def _load_tokenizer(folder: Path, config: BertConfig) -> BertTokenizerFast:
    has_files = any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt"))
    if not has_files:
        raise AssetError(f"encoder folder {folder} has neither tokenizer.json nor vocab.txt")
    try:
        tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    except Exception as error:  # noqa: BLE001 - fall back to the plain vocabulary
        if not (folder / "vocab.txt").is_file():
            raise AssetError(f"cannot load the tokenizer in {folder}: {error}") from error
        logger.warning("BertTokenizerFast.from_pretrained(%s) failed (%s); using vocab.txt", folder, error)
        tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    if tokenizer.model_max_length > config.max_position_embeddings:
        tokenizer.model_max_length = config.max_position_embeddings
    return tokenizer


def load_bert(spec: str | os.PathLike) -> tuple[TFBertModel, BertTokenizerFast]:
    """Load a pretrained BERT-family encoder and its tokenizer.

    Args:
        spec: str | PathLike. anything ``tfrec_lm.assets.encoder_dir`` accepts: a local
            folder with config.json, a known alias such as ``"all-MiniLM-L6-v2"``, or a hub
            name ``org/name``.

    Returns:
        tuple[TFBertModel, BertTokenizerFast]. the built encoder with every weight
        loaded from the checkpoint (a pooler absent from the checkpoint stays random), and
        the fast WordPiece tokenizer.

    Raises:
        AssetError: unresolvable spec, not a BERT-family config, no usable checkpoint
            (or a .bin checkpoint without torch), or TF weights missing from the checkpoint.
    """
    folder, config = _encoder_config(spec)
    if (folder / "tf_model.h5").is_file():
        model = TFBertModel.from_pretrained(str(folder))
    elif any((folder / name).is_file() for name in
             ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")):
        model = _load_pytorch_checkpoint(folder, config)
    else:
        raise AssetError(
            f"encoder folder {folder} has no tf_model.h5, model.safetensors or pytorch_model.bin"
        )
    return model, _load_tokenizer(folder, config)


def bert_architecture(spec: str | os.PathLike) -> tuple[TFBertModel, BertTokenizerFast]:
    """A BERT-family encoder built with fresh random weights, and its tokenizer, for a caller that
    restores every weight from a training checkpoint (a catalog update), so that the pretrained
    weights are neither read nor converted.

    Args:
        spec: str | PathLike. what `load_bert` accepts (only its config and tokenizer are read).

    Returns:
        tuple[TFBertModel, BertTokenizerFast]. the built encoder (random weights) and the tokenizer.

    Raises:
        AssetError: unresolvable spec, or not a BERT-family config.
    """
    folder, config = _encoder_config(spec)
    model = _built(config)
    return model, _load_tokenizer(folder, config)


def tiny_bert(
    vocab_size: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_position: int = 128,
    seed: int = 0,
) -> TFBertModel:
    """A small randomly initialised, already built BERT for unit tests.

    Args:
        vocab_size: int. vocabulary size (e.g. ``tokenizer.vocab_size``).
        hidden_size: int. width of the hidden states.
        num_layers: int. number of transformer layers.
        num_heads: int. attention heads (must divide ``hidden_size``).
        intermediate_size: int. width of the feed-forward layer.
        max_position: int. maximum sequence length.
        seed: int. seed of the weight initialisation (no global random state is touched).

    Returns:
        TFBertModel. deterministic for a given seed; LayerNorm scales are 1, biases
        0, other weights truncated-normal with standard deviation 0.02.
    """
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position,
        pad_token_id=0,
    )
    model = TFBertModel(config)
    model(model.dummy_inputs, training=False)
    rng = np.random.default_rng(seed)
    std = config.initializer_range
    for weight in model.weights:
        leaf = weight.name.split("/")[-1].split(":")[0]
        shape = tuple(weight.shape)
        if leaf == "gamma":
            value = np.ones(shape)
        elif leaf in ("beta", "bias"):
            value = np.zeros(shape)
        else:
            value = np.clip(rng.standard_normal(shape), -2.0, 2.0) * std
        weight.assign(value.astype(weight.dtype.as_numpy_dtype))
    return model


def write_vocab(words: Iterable[str], path: str | os.PathLike) -> Path:
    """Write a WordPiece vocabulary file for tests.

    Args:
        words: Iterable[str]. words to include; lowercased, split on whitespace, deduplicated.
        path: str | PathLike. output file (parent folders are created).

    Returns:
        Path. the file: [PAD] (id 0), [UNK], [CLS], [SEP], [MASK], the digits 0-9
        and their continuations ##0-##9 (so any number tokenizes), ASCII punctuation, then
        the words in first-seen order, one token a line.
    """
    tokens = (list(SPECIAL_TOKENS) + list(string.digits) + [f"##{d}" for d in string.digits]
              + list(string.punctuation))
    seen = set(tokens)
    for word in words:
        for token in word.lower().split():
            if token not in seen:
                seen.add(token)
                tokens.append(token)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return out


def tiny_tokenizer(
    words: Iterable[str],
    directory: str | os.PathLike,
    model_max_length: int = 128,
) -> BertTokenizerFast:
    """A lowercasing WordPiece tokenizer over a tiny vocabulary, for tests.

    Args:
        words: Iterable[str]. words of the vocabulary (see ``write_vocab``).
        directory: str | PathLike. folder receiving vocab.txt and the saved tokenizer files
            (so ``BertTokenizerFast.from_pretrained(directory)`` reloads it).
        model_max_length: int. default truncation length.

    Returns:
        BertTokenizerFast. unknown words map to [UNK]; [PAD] has id 0.
    """
    folder = Path(directory)
    vocab = write_vocab(words, folder / "vocab.txt")
    tokenizer = BertTokenizerFast(
        vocab_file=str(vocab), do_lower_case=True, model_max_length=model_max_length
    )
    tokenizer.save_pretrained(str(folder))
    return tokenizer
