"""Keras layers: the BERT text encoder, in-graph history composition, the sequence encoder."""

from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.layers.catalog_top_k import CatalogTopK
from tfrec_lm.layers.history_text_composer import HistoryTextComposer
from tfrec_lm.layers.sequence_encoder import SequenceEncoder

__all__ = ["BertTextEncoder", "CatalogTopK", "HistoryTextComposer", "SequenceEncoder"]
