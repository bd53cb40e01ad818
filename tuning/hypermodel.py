"""The search space: a KerasTuner `HyperModel` whose `build(hp)` returns a `TrainConfig`.

`build` does not return a Keras model: a trial's model is built and trained by
`tfrec_lm.training.train`, the one training function the CLI and the tests call, so the
tuners in `tuning.tuner` override `run_trial` to call it with the config built here.

Hyperparameter names are `TrainConfig` field names, so a trial's values merge onto a
config as they are. Knobs and their default ranges are in `DEFAULT_SPACE`. The
constraints of `TrainConfig.validate` are part of the space, not left to failing trials:

- `negatives` is tuned only where `finetune` is `frozen` (conditional scope); fine-tuned
  trials use `in-batch` (catalog negatives would re-encode the catalog every step).
- `trainable_layers` is tuned only where `finetune` is `top-k`; `num_blocks` and
  `num_heads` only for the `item-sequence` user tower; `history_tokens` only for the
  `history-text` tower.
- `item_ids` is tuned only when the base config keeps the item text (`item_text`); an
  ID-only item tower needs its IDs. `text_tuning_steps` likewise needs the item text (and
  `--strategy default`), and is active only with a frozen encoder. `text_whitening` likewise:
  tuned only with the item text, active only with a frozen encoder (`none` otherwise).
- `temperature` is tuned only for `similarity` `cosine`; raw dot products keep 1 (their
  norms set the scale).
- `id_lr_multiplier`, `item_fusion` and `id_dropout` are tuned only where `item_ids` is
  on (without IDs the multiplier keeps 1, the others the base config's value);
  `item_fusion` needs the item text too, and `id_dropout` `--cold-items text`.
- `item_fusion` offers `evidence` only where every trial can run it (`finetune` can only be
  `frozen`, `--cold-items text`, `--cold-neighbours` >= 1); `evidence_shrinkage` is tuned
  only where `item_fusion` is `evidence` (so only where the item tower has text and IDs).
  `gated` runs wherever `item_fusion` is tuned (it needs the item text and IDs, any `finetune`).

Each trial varies only the knobs that can matter to it. A knob whose condition holds
only for some trials is declared in KerasTuner conditional scopes (`hp.conditional_scope`,
nested for every tuned knob it depends on), so a trial where it is inactive has no value
for it (`trial.hyperparameters.values` lacks it; the oracle does not sample it). A knob
whose condition can never hold in this search (its parent pinned, e.g. `trainable_layers`
with `finetune=frozen`, or the encoder unused: no item text and no history-text tower)
leaves the search space altogether.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import tfrec_lm  # noqa: F401  (TF_USE_LEGACY_KERAS before keras_tuner imports TensorFlow)

import keras_tuner as kt

from tfrec_lm.config import TrainConfig
from tfrec_lm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric interval of the search space (`hp.Int` if both ends are ints, else `hp.Float`).

    Attributes:
        min: int or float. lower end (inclusive).
        max: int or float. upper end (inclusive).
        sampling: str. `linear`, `log` or `reverse_log`.
        step: int, float or None. grid step (None: continuous for floats, 1 for ints).
    """

    min: Union[int, float]
    max: Union[int, float]
    sampling: str = "linear"
    step: Optional[Union[int, float]] = None

    @property
    def is_int(self) -> bool:
        return isinstance(self.min, int) and isinstance(self.max, int) and not isinstance(self.min, bool)

    def declare(self, hp: kt.HyperParameters, name: str):
        if self.is_int:
            return hp.Int(name, self.min, self.max, step=self.step, sampling=self.sampling)
        value = hp.Float(name, float(self.min), float(self.max), step=self.step, sampling=self.sampling)
        # A stepped float (0.1, 0.2, ...) is written as such, not as 0.30000000000000004.
        return value if value is None or self.step is None else round(value, 10)

    def values(self) -> Optional[list]:
        """Every value of an integer range (None for a continuous range)."""
        if self.is_int and self.sampling == "linear":
            return list(range(self.min, self.max + 1, self.step or 1))
        return None


SpaceEntry = Union[Range, Sequence[Any]]

# Default search space: knob -> Range (numeric interval) or list (categorical choice).
# A one-element list pins the knob. Ranges are sized for the MovieLens-100K CPU/GPU runs.
DEFAULT_SPACE: dict[str, SpaceEntry] = {
    "learning_rate": Range(1e-5, 3e-3, sampling="log"),
    "lr_decay": ["constant", "cosine"],
    "weight_decay": Range(1e-6, 1e-2, sampling="log"),
    "similarity": ["cosine", "dot"],
    "temperature": Range(0.02, 0.5, sampling="log"),   # only for similarity == cosine (dot: 1)
    "batch_size": [64, 128, 256],
    "embedding_dim": [32, 64, 128, 256],
    "dropout": Range(0.0, 0.5, step=0.1),
    "finetune": ["frozen", "top-k", "full"],
    "trainable_layers": Range(1, 4),            # only for finetune == top-k
    "negatives": ["catalog", "in-batch"],       # only for finetune == frozen (else in-batch)
    "history_negatives": [True, False],         # False: the query's own history out of its softmax
    "logit_adjustment": [0.0, 0.5, 1.0],        # training logits + tau * log p (issue 30); 0: off
    "user_tower": ["item-sequence", "history-text"],
    "num_blocks": Range(1, 3),                  # only for user_tower == item-sequence
    "num_heads": [1, 2, 4],                     # only for user_tower == item-sequence
    "max_history": [20, 50, 100, 200],
    "history_tokens": [64, 128, 256],           # only for user_tower == history-text
    # Retrieval vs ranking: only the ratio matters beside the learning rate, so the
    # retrieval weight is pinned to 1 and the ranking weight tuned (unpin through `space`).
    "retrieval_weight": [1.0],
    "ranking_weight": [0.0, 0.01, 0.1, 0.3, 1.0],
    "item_ids": [True, False],                  # only when the base config keeps item_text
    "item_fusion": ["sum", "balanced", "evidence", "gated"],  # evidence only where it can run (frozen encoder, ...)
    "evidence_shrinkage": Range(1.0, 100.0, sampling="log"),  # only for item_fusion == evidence
    "id_dropout": [0.0, 0.1, 0.25],              # issue 12's cold-item training against warm quality
    "id_lr_multiplier": [1.0, 2.0, 3.0],        # only with item_ids; 2-3: +2.5% on ML-100K, within noise
    "item_bias": [False, True],
    "text_tuning_steps": [0, 300],              # only for finetune == frozen
    "text_whitening": ["none", "center", "whiten"],  # only for finetune == frozen, with the item text
    # Recency: item-age embeddings and the long/short-term gate (item-sequence only).
    "time_features": [True, False],
    "long_short": [True, False],
    "short_window": [5, 10, 20],                # only with long_short
}

KNOBS: tuple[str, ...] = tuple(DEFAULT_SPACE)

# Parent knob and the parent values under which each conditional knob is active.
CONDITIONS: dict[str, tuple[str, tuple]] = {
    "temperature": ("similarity", ("cosine",)),
    "trainable_layers": ("finetune", ("top-k",)),
    "negatives": ("finetune", ("frozen",)),
    "text_tuning_steps": ("finetune", ("frozen",)),
    "text_whitening": ("finetune", ("frozen",)),
    "id_lr_multiplier": ("item_ids", (True,)),
    "item_fusion": ("item_ids", (True,)),
    "evidence_shrinkage": ("item_fusion", ("evidence",)),
    "id_dropout": ("item_ids", (True,)),
    "num_blocks": ("user_tower", ("item-sequence",)),
    "num_heads": ("user_tower", ("item-sequence",)),
    "history_tokens": ("user_tower", ("history-text",)),
    "time_features": ("user_tower", ("item-sequence",)),
    "long_short": ("user_tower", ("item-sequence",)),
    "short_window": ("long_short", (True,)),
}
# Value of a conditional knob where its condition does not hold (None: the base config's).
INACTIVE_VALUE: dict[str, Any] = {"temperature": 1.0, "negatives": "in-batch", "time_features": False, "long_short": False,
                                  "text_tuning_steps": 0, "id_lr_multiplier": 1.0, "text_whitening": "none"}

_CONFIG_FIELDS = {field.name for field in dataclasses.fields(TrainConfig)}


def _as_entry(name: str, entry) -> SpaceEntry:
    if isinstance(entry, Range):
        return entry
    if isinstance(entry, Mapping):
        try:
            return Range(entry["min"], entry["max"], sampling=entry.get("sampling", "linear"),
                         step=entry.get("step"))
        except KeyError:
            raise ConfigError(f"search space of {name}: a range needs `min` and `max`, got {dict(entry)}") from None
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable):
        return [entry]
    values = list(entry)
    if not values:
        raise ConfigError(f"search space of {name} is empty")
    return values


class RecommenderHyperModel(kt.HyperModel):
    """Search space over `TrainConfig`: `build(hp)` returns the trial's `TrainConfig`.

    Args:
        base: TrainConfig. every option that is not tuned (data, encoder, epochs, ...).
        fixed: dict. options pinned for the whole search (any `TrainConfig` key); a
            pinned knob leaves the search space.
        space: dict. knob -> list of choices, `Range`, or `{"min", "max", "sampling",
            "step"}`: narrows (or widens) a knob's default range. A one-element list pins it.
        tune: iterable of str or None. the knobs to tune (default: every knob of
            `DEFAULT_SPACE` not pinned by `fixed`); the others keep the base config's value.

    Raises:
        ConfigError: unknown keys, or a space whose every
            point would break `TrainConfig.validate`.
    """

    def __init__(self, base: Optional[TrainConfig] = None, fixed: Optional[Mapping[str, Any]] = None,
                 space: Optional[Mapping[str, Any]] = None, tune: Optional[Iterable[str]] = None,
                 name: str = "tfrec_lm"):
        super().__init__(name=name, tunable=True)
        fixed = dict(fixed or {})
        space = dict(space or {})
        tune = list(KNOBS if tune is None else tune)
        for key in [*space, *tune]:
            if key not in DEFAULT_SPACE:
                raise ConfigError(f"{key!r} is not a tunable knob; knobs: {', '.join(KNOBS)}")
        self.base = TrainConfig.from_dict(fixed, base=base or TrainConfig())
        entries = {name: _as_entry(name, space.get(name, DEFAULT_SPACE[name])) for name in tune}
        self.space: dict[str, SpaceEntry] = {}
        for name, entry in entries.items():
            if name in fixed:
                continue
            if isinstance(entry, list) and len(entry) == 1:
                self.base = self.base.replace(**{name: entry[0]})
            else:
                self.space[name] = entry
        if not self.base.item_text and "item_ids" in self.space:
            # An item tower without text needs its IDs: item_ids is not a knob then.
            del self.space["item_ids"]
            self.base = self.base.replace(item_ids=True)
        if (not self.base.item_text or self.base.strategy != "default") and "text_tuning_steps" in self.space:
            # Text tuning tunes the item text encoder on one device: not a knob without either.
            del self.space["text_tuning_steps"]
            self.base = self.base.replace(text_tuning_steps=0)
        if not self.base.item_text:
            # No text part: nothing to balance against the IDs, no text vectors to whiten.
            self.space.pop("item_fusion", None)
            self.space.pop("text_whitening", None)
            if "history-text" not in self.possible_values("user_tower"):
                self.space.pop("finetune", None)  # no tower reads the encoder: fine-tuning cannot matter
        if self.base.cold_items != "text":
            self.space.pop("id_dropout", None)  # the factory passes id_dropout only with --cold-items text
        fusions = self.space.get("item_fusion")
        if isinstance(fusions, list) and "evidence" in fusions and not self._evidence_runs():
            if "item_fusion" in space:
                raise ConfigError("item_fusion=evidence needs a frozen encoder in every trial (pin finetune=frozen), "
                                  "the item text, cold_items=text and cold_neighbours >= 1")
            self.space["item_fusion"] = [value for value in fusions if value != "evidence"]  # the default's
        self._drop_dead_knobs()
        self._check()

    def _evidence_runs(self) -> bool:
        """Whether every trial of this search could run `item_fusion=evidence` (given item IDs)."""
        return bool(self.base.item_text and set(self.possible_values("finetune")) == {"frozen"}
                    and self.base.cold_items == "text" and self.base.cold_neighbours >= 1)

    def _reachable(self, name: str) -> Optional[set]:
        """The values a knob can have in some trial (None: any, a continuous range)."""
        if name in self.space:
            values = self.possible_values(name)
            return None if values is None else set(values)
        values = {getattr(self.base, name)}
        if name in CONDITIONS:  # inactive in some trials, or in all
            values.add(INACTIVE_VALUE.get(name, getattr(self.base, name)))
        return values

    def _drop_dead_knobs(self) -> None:
        """Removes every knob whose condition no trial can meet (its parent pinned to other values)."""
        changed = True
        while changed:
            changed = False
            for name in list(self.space):
                if name not in CONDITIONS:
                    continue
                parent, values = CONDITIONS[name]
                reachable = self._reachable(parent)
                if reachable is not None and not reachable & set(values):
                    del self.space[name]
                    changed = True

    # ---- space queries -------------------------------------------------------------

    def tuned(self, name: str) -> bool:
        return name in self.space

    def possible_values(self, name: str) -> Optional[list]:
        """Every value a knob can take in this search (None for a continuous range)."""
        if name not in self.space:
            return [getattr(self.base, name)]
        entry = self.space[name]
        return entry.values() if isinstance(entry, Range) else list(entry)

    def _check(self):
        finetunes = self.possible_values("finetune")
        if not self.tuned("negatives") and self.base.negatives == "catalog" and set(finetunes) - {"frozen"}:
            raise ConfigError("negatives=catalog is pinned but finetune may be "
                              f"{sorted(set(finetunes) - {'frozen'})}: catalog negatives need finetune=frozen; "
                              "pin finetune=frozen or let negatives be tuned")
        # A trial without item IDs (or with item_fusion untuned) keeps the base's item_fusion.
        if self.base.item_fusion == "evidence" and (self.tuned("item_ids") or (
                not self.tuned("item_fusion") and not self._evidence_runs())):
            raise ConfigError("item_fusion=evidence is the base config's, so trials without a tuned item_fusion "
                              "(and those without item IDs) run it, and it needs finetune=frozen, item_ids=true, the "
                              "item text, cold_items=text and cold_neighbours >= 1 in every trial: pin them")
        heads = self.possible_values("num_heads")
        dims = self.possible_values("embedding_dim")
        if heads and dims and "item-sequence" in self.possible_values("user_tower"):
            bad = sorted({(d, h) for d in dims for h in heads if d % h})
            if bad:
                raise ConfigError(f"num_heads must divide embedding_dim; these pairs do not: {bad}")
        for name, entry in self.space.items():
            if isinstance(entry, list):
                field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
                allowed = field.metadata.get("choices")
                unknown = [v for v in entry if allowed and v not in allowed]
                if unknown:
                    raise ConfigError(f"{name}: {unknown} not among {list(allowed)}")

    # ---- build ---------------------------------------------------------------------

    def _declare(self, hp: kt.HyperParameters, name: str):
        entry = self.space[name]
        if isinstance(entry, Range):
            return entry.declare(hp, name)
        if all(isinstance(v, bool) for v in entry) and sorted(entry) == [False, True]:
            return hp.Boolean(name)
        return hp.Choice(name, entry, ordered=all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in entry))

    def _value(self, hp: kt.HyperParameters, name: str, chosen: dict):
        """Declares `name` (inside its condition's scope) and returns this trial's value."""
        condition = CONDITIONS.get(name)
        inactive = INACTIVE_VALUE.get(name, getattr(self.base, name))
        if condition is None:
            return self._declare(hp, name) if self.tuned(name) else getattr(self.base, name)
        parent, parent_values = condition
        active = chosen[parent] in parent_values
        if not self.tuned(name):
            return getattr(self.base, name) if active else inactive
        # Nest the scopes of every tuned ancestor, outermost first (KerasTuner needs a
        # conditional parent declared in the scope it was declared in). An untuned
        # ancestor sets no scope; its own parents matter when its inactive value fails.
        chain, child = [], name
        while child in CONDITIONS:
            parent, values = CONDITIONS[child]
            if self.tuned(parent):
                chain.append((parent, list(values)))
            elif INACTIVE_VALUE.get(parent, getattr(self.base, parent)) in values:
                break
            child = parent
        with contextlib.ExitStack() as scopes:
            for ancestor, values in reversed(chain):
                scopes.enter_context(hp.conditional_scope(ancestor, values))
            value = self._declare(hp, name)
        return value if active else inactive

    def build(self, hp: kt.HyperParameters) -> TrainConfig:
        """The trial's `TrainConfig`: the base config with this trial's knob values.

        Args:
            hp: keras_tuner.HyperParameters.

        Returns:
            TrainConfig. validated.
        """
        chosen: dict[str, Any] = {}
        order = ["learning_rate", "lr_decay", "weight_decay", "batch_size", "similarity", "temperature",
                 "embedding_dim", "dropout",
                 "finetune", "trainable_layers", "negatives", "history_negatives", "logit_adjustment",
                 "user_tower", "num_blocks", "num_heads", "max_history", "history_tokens",
                 "time_features", "long_short", "short_window",
                 "retrieval_weight", "ranking_weight", "item_ids", "item_fusion", "evidence_shrinkage", "id_dropout",
                 "id_lr_multiplier",
                 "item_bias", "text_tuning_steps", "text_whitening"]
        assert set(order) == set(KNOBS), "every knob has a place in build()"
        for name in order:
            chosen[name] = self._value(hp, name, chosen)
        return TrainConfig.from_dict(chosen, base=self.base)

    def describe(self) -> dict:
        """The search's settings as plain data: the base config and each tuned knob's space."""
        space = {}
        for name, entry in self.space.items():
            space[name] = dataclasses.asdict(entry) if isinstance(entry, Range) else list(entry)
        return {"base": self.base.to_dict(), "space": space}

