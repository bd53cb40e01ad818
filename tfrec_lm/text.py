"""Item texts tokenized once, ahead of training and export."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ItemTokens:
    """Word-piece ids of every catalog item's text, computed once.

    Attributes:
        token_ids: np.ndarray int32. [C+1, L] the item texts' word-piece ids without
            special tokens, right-padded with `pad_id`; row 0 is the padding item.
        lengths: np.ndarray int32. [C+1] number of real tokens per row.
        cls_id: int. id of the `[CLS]` token.
        sep_id: int. id of the `[SEP]` token.
        pad_id: int. id of the `[PAD]` token.
    """

    token_ids: np.ndarray
    lengths: np.ndarray
    cls_id: int
    sep_id: int
    pad_id: int

    @property
    def max_length(self) -> int:
        return int(self.token_ids.shape[1])

    def with_special_tokens(self) -> np.ndarray:
        """The token rows with the special tokens added.

        Returns:
            np.ndarray int32. [C+1, L+2] `[CLS] text [SEP]` rows, padded.
        """
        n, width = self.token_ids.shape
        out = np.full((n, width + 2), self.pad_id, dtype=np.int32)
        out[:, 0] = self.cls_id
        for row in range(n):
            length = self.lengths[row]
            out[row, 1 : 1 + length] = self.token_ids[row, :length]
            out[row, 1 + length] = self.sep_id
        return out


def tokenize_items(texts, tokenizer, max_item_tokens: int = 32) -> ItemTokens:
    """Tokenizes item texts once.

    Args:
        texts: sequence of str. [C] item texts in vocabulary order (item 1 first);
            row 0 of the result is the padding item.
        tokenizer: a HuggingFace BERT tokenizer.
        max_item_tokens: int. word pieces kept per item (the text is truncated).

    Returns:
        ItemTokens.

    Raises:
        ValueError: `max_item_tokens` < 1, or no texts (an empty catalog).
    """
    if max_item_tokens < 1:
        raise ValueError(f"max_item_tokens must be >= 1, got {max_item_tokens}")
    texts = list(texts)
    if not texts:
        raise ValueError("no item texts to tokenize: the catalog is empty")
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        truncation=True,
        max_length=max_item_tokens,
    )["input_ids"]
    pad_id = int(tokenizer.pad_token_id or 0)
    token_ids = np.full((len(encoded) + 1, max_item_tokens), pad_id, dtype=np.int32)
    lengths = np.zeros(len(encoded) + 1, dtype=np.int32)
    for row, ids in enumerate(encoded, start=1):
        token_ids[row, : len(ids)] = ids
        lengths[row] = len(ids)
    truncated = int(np.sum(lengths >= max_item_tokens))
    if truncated:
        logger.info("%d item texts truncated to %d word pieces", truncated, max_item_tokens)
    return ItemTokens(
        token_ids=token_ids,
        lengths=lengths,
        cls_id=int(tokenizer.cls_token_id),
        sep_id=int(tokenizer.sep_token_id),
        pad_id=pad_id,
    )
