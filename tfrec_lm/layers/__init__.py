"""Keras layers: the BERT text encoder, in-graph history composition, the sequence encoder and
the interest composer around it."""

from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.layers.catalog_top_k import CatalogTopK
from tfrec_lm.layers.history_text_composer import HistoryTextComposer
from tfrec_lm.layers.interest_composer import InterestComposer
from tfrec_lm.layers.sequence_encoder import SequenceEncoder

__all__ = ["BertTextEncoder", "CatalogTopK", "HistoryTextComposer", "InterestComposer", "SequenceEncoder"]
