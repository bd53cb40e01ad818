"""Towers and the two-tower TFRS model."""

from tfrec_lm.models.history_text_user_tower import HistoryTextUserTower
from tfrec_lm.models.item_sequence_user_tower import ItemSequenceUserTower
from tfrec_lm.models.item_tower import ItemTower
from tfrec_lm.models.two_tower import TwoTowerModel

__all__ = ["HistoryTextUserTower", "ItemSequenceUserTower", "ItemTower", "TwoTowerModel"]
