"""`SavedTokenizer`: a fast tokenizer's `tokenizer.json`, read with the `tokenizers` library alone."""

from __future__ import annotations

from pathlib import Path


class SavedTokenizer:
    """The word-piece tokenizer a `transformers` fast tokenizer wraps, without importing transformers.

    It answers the one call `tfrec_lm.text.tokenize_items` makes, with the same ids:
    `PreTrainedTokenizerFast` runs this `tokenizers.Tokenizer` (the file is its
    `backend_tokenizer`, saved) and sets its truncation for each call, as this does.

    Args:
        path: str | Path. the `tokenizer.json` (`tokenizers.Tokenizer.save`).
        cls_id: int. id of the `[CLS]` token.
        sep_id: int. id of the `[SEP]` token.
        pad_id: int. id of the `[PAD]` token.
    """

    def __init__(self, path, cls_id: int, sep_id: int, pad_id: int):
        from tokenizers import Tokenizer

        self.path = Path(path)
        self._tokenizer = Tokenizer.from_file(str(self.path))
        # Truncation and padding are per call, as in transformers; a saved file may carry a call's settings.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.cls_token_id = int(cls_id)
        self.sep_token_id = int(sep_id)
        self.pad_token_id = int(pad_id)

    def __call__(self, texts, add_special_tokens: bool = True, truncation: bool = False, max_length=None) -> dict:
        """Word-piece ids of each text.

        Args:
            texts: list of str.
            add_special_tokens: bool. add `[CLS]` and `[SEP]` (the file's post-processor).
            truncation: bool. keep at most `max_length` ids of each text.
            max_length: int or None. the truncation length.

        Returns:
            dict. `input_ids`: list of list of int.
        """
        if truncation and max_length is not None:
            self._tokenizer.enable_truncation(int(max_length))  # transformers' longest-first, right, no stride
        try:
            encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        finally:
            self._tokenizer.no_truncation()
        return {"input_ids": [encoding.ids for encoding in encoded]}
