"""`SavedTokenizer`: the `tokenizers` file of a fast tokenizer gives `tokenize_items` the same ids."""

import numpy as np

from tfrec_lm.saved_tokenizer import SavedTokenizer
from tfrec_lm.text import tokenize_items


def test_the_saved_file_tokenizes_items_as_the_transformers_tokenizer(tokenizer, synthetic, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(path))
    saved = SavedTokenizer(path, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
                           pad_id=tokenizer.pad_token_id)
    texts = list(synthetic.items["text"]) + [
        "An UNKNOWN word, punctuation!? and CAPITALS",
        " ".join(synthetic.items["text"][:6]),  # longer than the truncation length
        "",
    ]
    for length in (4, 32):
        expected = tokenize_items(texts, tokenizer, max_item_tokens=length)
        got = tokenize_items(texts, saved, max_item_tokens=length)
        np.testing.assert_array_equal(got.token_ids, expected.token_ids)
        np.testing.assert_array_equal(got.lengths, expected.lengths)
        assert (got.cls_id, got.sep_id, got.pad_id) == (expected.cls_id, expected.sep_id, expected.pad_id)
    assert (tokenize_items(texts, saved, max_item_tokens=4).lengths == 4).any()  # truncation was exercised
    # With the special tokens and truncation, as transformers: [CLS] and [SEP] kept inside the length.
    with_special = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=5)["input_ids"]
    assert saved(texts, add_special_tokens=True, truncation=True, max_length=5)["input_ids"] == with_special
    # Truncation is per call: the next call without it is whole.
    assert saved(texts[-2:-1])["input_ids"] == tokenizer(texts[-2:-1])["input_ids"]
