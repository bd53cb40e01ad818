"""Tests of tfrec_lm.bert: tiny models/tokenizers and loading PyTorch-format checkpoints."""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json
import logging
import string
import time

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file
from transformers import BertTokenizerFast, TFBertModel
from transformers.modeling_tf_pytorch_utils import TransposeType, convert_tf_weight_name_to_pt_weight_name

from tfrec_lm.assets import encoder_dir
from tfrec_lm.errors import AssetError
from tfrec_lm.bert import SPECIAL_TOKENS, bert_architecture, load_bert, tiny_bert, tiny_tokenizer, write_vocab

WORDS = ["a", "man", "is", "eating", "food", "riding", "horse", "Bread"]


def _export_pytorch_style(model: TFBertModel, folder, prefix="", drop=(), extra=None):
    """Write ``model`` as a PyTorch-named safetensors checkpoint plus config.json."""
    state = {}
    for weight in model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(
            weight.name, start_prefix_to_remove="bert.", tf_weight_shape=weight.shape)
        array = weight.numpy()
        if transpose is TransposeType.SIMPLE:
            array = array.T
        state[prefix + name] = np.ascontiguousarray(array)
    state[prefix + "embeddings.position_ids"] = np.arange(
        model.config.max_position_embeddings, dtype=np.int64)[None]
    for key in list(state):
        if any(key.startswith(prefix + d) for d in drop):
            del state[key]
    state.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    model.config.save_pretrained(str(folder))
    return state


def _embed(model, tokenizer, sentences):
    batch = tokenizer(sentences, padding=True, return_tensors="tf")
    hidden = model(dict(batch), training=False).last_hidden_state
    mask = tf.cast(batch["attention_mask"], hidden.dtype)[..., None]
    pooled = tf.reduce_sum(hidden * mask, axis=1) / tf.reduce_sum(mask, axis=1)
    return tf.math.l2_normalize(pooled, axis=-1).numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tokenizer = tiny_tokenizer(WORDS, folder)
    return tokenizer, tiny_bert(tokenizer.vocab_size), folder


def test_write_vocab(tmp_path):
    path = write_vocab(["Hello world", "hello", "Zebra"], tmp_path / "v" / "vocab.txt")
    tokens = path.read_text().splitlines()
    assert tokens[:5] == list(SPECIAL_TOKENS) and tokens[0] == "[PAD]"
    assert set(string.digits) <= set(tokens) and set(string.punctuation) <= set(tokens)
    assert tokens[-3:] == ["hello", "world", "zebra"]
    assert len(tokens) == len(set(tokens))


def test_tiny_tokenizer(tiny):
    tokenizer, _, folder = tiny
    assert isinstance(tokenizer, BertTokenizerFast)
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 1
    ids = tokenizer("A man eating BREAD, 42 unicorns!")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["[CLS]", "a", "man", "eating", "bread", ",", "4", "##2", "[UNK]", "!", "[SEP]"]
    reloaded = BertTokenizerFast.from_pretrained(str(folder))
    assert reloaded("a horse")["input_ids"] == tokenizer("a horse")["input_ids"]


def test_tiny_bert_shapes(tiny):
    tokenizer, model, _ = tiny
    batch = tokenizer(["a man is eating food", "a horse"], padding=True, return_tensors="tf")
    out = model(dict(batch), training=False)
    length = batch["input_ids"].shape[1]
    assert out.last_hidden_state.shape == (2, length, 32)
    assert out.pooler_output.shape == (2, 32)
    assert model.config.num_hidden_layers == 2 and model.config.max_position_embeddings == 128
    assert np.isfinite(out.last_hidden_state.numpy()).all()


def test_tiny_bert_is_seeded():
    a, b, c = tiny_bert(40, seed=1), tiny_bert(40, seed=1), tiny_bert(40, seed=2)
    wa, wb, wc = ([w.numpy() for w in m.weights] for m in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert not np.array_equal(wa[0], wc[0])
    custom = tiny_bert(40, hidden_size=16, num_layers=1, num_heads=4, intermediate_size=24, max_position=20)
    assert custom(custom.dummy_inputs).last_hidden_state.shape[-1] == 16


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_load_bert_safetensors_round_trip(tiny, tmp_path, prefix, caplog):
    tokenizer, model, tok_folder = tiny
    folder = tmp_path / "enc"
    extra = {"cls.predictions.bias": np.zeros(5, np.float32)} if prefix else None
    _export_pytorch_style(model, folder, prefix=prefix, extra=extra)
    for f in tok_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    with caplog.at_level(logging.WARNING, logger="tfrec_lm.bert"):
        loaded, loaded_tok = load_bert(folder)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for original, copy in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(original.numpy(), copy.numpy())
    sentences = ["a man is eating food", "a man riding a horse"]
    np.testing.assert_allclose(_embed(loaded, loaded_tok, sentences), _embed(model, tokenizer, sentences),
                               atol=1e-6)


def test_bert_architecture_reads_no_weights(tiny, tmp_path):
    """The config and tokenizer only: the same shapes as `load_bert`'s encoder, none of its weights."""
    tokenizer, model, tok_folder = tiny
    folder = tmp_path / "enc"
    model.config.save_pretrained(str(folder))  # no checkpoint in the folder at all
    for f in tok_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    built, built_tokenizer = bert_architecture(folder)
    assert [w.shape for w in built.weights] == [w.shape for w in model.weights]
    assert not np.allclose(built.weights[0].numpy(), model.weights[0].numpy())
    assert built_tokenizer("a horse")["input_ids"] == tokenizer("a horse")["input_ids"]


def test_load_bert_without_pooler_keeps_random_pooler(tiny, tmp_path, caplog):
    _, model, tok_folder = tiny
    folder = tmp_path / "enc"
    _export_pytorch_style(model, folder, drop=("pooler.",))
    (folder / "vocab.txt").write_bytes((tok_folder / "vocab.txt").read_bytes())  # vocab only
    with caplog.at_level(logging.WARNING, logger="tfrec_lm.bert"):
        loaded, tokenizer = load_bert(folder)
    assert any("pooler" in r.getMessage() for r in caplog.records)
    assert all(np.isfinite(w.numpy()).all() for w in loaded.weights)
    assert tokenizer.model_max_length == 128
    assert tokenizer.convert_ids_to_tokens(tokenizer("a horse")["input_ids"]) == ["[CLS]", "a", "horse", "[SEP]"]


def test_load_bert_missing_weight_raises(tiny, tmp_path):
    _, model, tok_folder = tiny
    folder = tmp_path / "enc"
    _export_pytorch_style(model, folder, drop=("encoder.layer.1.output.dense.",))
    (folder / "vocab.txt").write_bytes((tok_folder / "vocab.txt").read_bytes())
    with pytest.raises(AssetError, match=r"layer_\._1/output/dense"):
        load_bert(folder)


def test_load_bert_rejects_other_model_types(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(AssetError, match="gpt2"):
        load_bert(tmp_path)


def test_load_bert_without_checkpoint(tiny, tmp_path):
    _, model, _ = tiny
    model.config.save_pretrained(str(tmp_path))
    with pytest.raises(AssetError, match="model.safetensors"):
        load_bert(tmp_path)


def test_load_bert_bin_needs_torch(tiny, tmp_path):
    pytest.importorskip("tensorflow")
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed")
    except ImportError:
        pass
    _, model, _ = tiny
    model.config.save_pretrained(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(AssetError, match="torch"):
        load_bert(tmp_path)


def test_load_bert_unknown_spec():
    with pytest.raises(AssetError, match="all-MiniLM-L6-v2"):
        load_bert("no-such-encoder")


@pytest.mark.integration
def test_all_minilm_l6_v2_pretrained():
    start = time.perf_counter()
    model, tokenizer = load_bert("all-MiniLM-L6-v2")
    elapsed = time.perf_counter() - start
    logging.getLogger(__name__).info("load_bert('all-MiniLM-L6-v2') took %.2fs", elapsed)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert tokenizer.vocab_size == 30522 and tokenizer.model_max_length == 512

    food, bread, horse = _embed(model, tokenizer, [
        "A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."])
    cos_bread, cos_horse = float(food @ bread), float(food @ horse)
    print(f"load {elapsed:.2f}s cos(food, bread)={cos_bread:.4f} cos(food, horse)={cos_horse:.4f}")
    assert cos_bread > cos_horse + 0.2
    # Reference values of sentence-transformers/all-MiniLM-L6-v2 (PyTorch).
    assert cos_bread == pytest.approx(0.7553, abs=2e-3)
    assert cos_horse == pytest.approx(0.2474, abs=2e-3)

    # Every TF weight holds its checkpoint tensor ...
    state = load_file(str(encoder_dir("all-MiniLM-L6-v2") / "model.safetensors"))
    for weight in model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(
            weight.name, start_prefix_to_remove="bert.", tf_weight_shape=weight.shape)
        expected = state[name].T if transpose is TransposeType.SIMPLE else state[name]
        np.testing.assert_array_equal(weight.numpy(), expected, err_msg=weight.name)
    # ... and differs from a freshly initialised model, except pooler.dense.bias, which is
    # all zeros in this checkpoint (the pooler was never trained) and so equals the init.
    fresh = TFBertModel(model.config)
    fresh(fresh.dummy_inputs, training=False)
    assert len(fresh.weights) == len(model.weights)
    for init, loaded in zip(fresh.weights, model.weights):
        assert init.shape == loaded.shape
        if loaded.name.endswith("/pooler/dense/bias:0"):
            assert not np.any(state["pooler.dense.bias"])
            continue
        assert not np.allclose(init.numpy(), loaded.numpy()), loaded.name


def test_load_bert_tf_h5(tiny, tmp_path):
    tokenizer, model, tok_folder = tiny
    model.save_pretrained(str(tmp_path))
    for f in tok_folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    assert (tmp_path / "tf_model.h5").is_file()
    loaded, _ = load_bert(tmp_path)
    for original, copy in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(original.numpy(), copy.numpy())
