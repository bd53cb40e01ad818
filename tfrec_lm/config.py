"""Training configuration: every option, its default and its meaning, in one place.

The CLI (`python -m tfrec_lm.train`), the tuner (`tuning/`) and the tests all build a
`TrainConfig` and call `tfrec_lm.training.train` with it. A config file (YAML or
JSON) may carry any field; an unknown key is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from tfrec_lm.errors import ConfigError

TRUE_WORDS = ("true", "yes", "on")
FALSE_WORDS = ("false", "no", "off")


def parse_bool(text: str, digits: bool = True) -> bool:
    """A boolean written on a command line: true/yes/on or false/no/off, any case.

    Args:
        text: str. the word (surrounding spaces are ignored).
        digits: bool. also accept `1` and `0` (the serve CLI does; `tuning.search`'s
            `--set` reads them as integers instead).

    Returns:
        bool. the value.

    Raises:
        ValueError: `text` is none of these words.
    """
    value = text.strip().lower()
    if value in TRUE_WORDS or (digits and value == "1"):
        return True
    if value in FALSE_WORDS or (digits and value == "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_time(text) -> int:
    """A point in time given as Unix seconds or an ISO-8601 date or date-time (UTC unless it has an offset).

    Args:
        text: str | int. `1717200000`, `1998-03-01`, `1998-03-01T12:00:00` or `1998-03-01T12:00:00+02:00`.

    Returns:
        int. Unix seconds.

    Raises:
        ValueError: neither.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    value = str(text).strip()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected Unix seconds or an ISO date such as 1998-03-01, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp())


TIME_OPTIONS = ("since",)  # options that also take ISO dates


def _check_type(name: str, value, hint):
    """Checks one option value against its field's type (no silent coercion of text).

    Args:
        name: str. the option's name, for the message.
        value: object. the value given.
        hint: type. the field's type hint (`Optional[...]` allows None).

    Returns:
        object. `value` as the field's type (a float given as text becomes a float).

    Raises:
        ConfigError: the value is not of the field's type.
    """
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None and typing.get_args(hint):
        return None
    kind = args[0] if args else hint
    if name in TIME_OPTIONS and isinstance(value, str):
        try:
            value = parse_time(value)
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{name} must be {kind.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _opt(default, help: str, choices=None):  # noqa: A002 - mirrors argparse
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """All options of a training run. Defaults are the CPU preset.

    The learning rate, batch size, temperature and dropout are the Bayesian search's best trial
    on MovieLens-100K validation (benchmarks/results/tuning_quality.json, trial 4) with ID
    dropout 0 (BUILD_NOTES.md "Issue 15 in session 7"), the learning rate decaying along a
    cosine over 10 epochs and the last epoch's weights kept (BUILD_NOTES.md "Issue 15 in
    session 8"), and each query's own history left out of its softmax negatives (BUILD_NOTES.md
    "Issue 15 in session 13"; benchmarks/results/quality_candidates.json: `default`).
    """

    # Data
    data: str = _opt("ml-100k", "dataset: `ml-100k`, or `files` to read --interactions/--items", ("ml-100k", "files"))
    data_source: str = _opt(
        "auto",
        "where ml-100k comes from: `tfds` (needs network or a prepared TFDS dir), "
        "`recbole` (the copy in the recbole wheel), `auto` (TFDS if prepared locally, else recbole)",
        ("auto", "tfds", "recbole"),
    )
    interactions: Optional[str] = _opt(None, "your interactions file (CSV/TSV/Parquet/JSONL: user_id,item_id,timestamp[,rating])")
    items: Optional[str] = _opt(None, "your items file (item_id and text, or title/year/genres)")
    strict: bool = _opt(False, "stop at the first file with rows that break the schema")
    max_history: int = _opt(50, "H: most recent history items a user tower sees")

    # Encoder
    encoder: str = _opt("all-MiniLM-L6-v2", "BERT-family encoder: a known alias, a local folder, or a hub name")
    finetune: str = _opt(
        "frozen", "encoder fine-tuning: full, top-k layers, frozen, or lora (low-rank adapters on the attention "
                  "projections of the top --trainable-layers layers, over cached lower-layer states)",
        ("full", "top-k", "frozen", "lora"))
    trainable_layers: int = _opt(2, "k for --finetune top-k and lora: the top layers trained or adapted")
    lora_rank: int = _opt(8, "r of the --finetune lora adapters")
    lora_alpha: Optional[float] = _opt(None, "scale alpha of the --finetune lora adapters (update x alpha / r); "
                                             "default: the rank (scale 1)")
    lora_refresh_steps: int = _opt(
        50, "--finetune lora: steps between recomputations of the whole catalog's adapted text vectors (the "
            "softmax negatives in between are that stale; each step recomputes its positives with gradient)")
    lora_negative_samples: int = _opt(
        128, "--finetune lora: catalog items drawn per step whose text vectors are also recomputed, their "
             "gradient scaled to estimate the whole catalog's (0: the positives only)")
    max_item_tokens: int = _opt(32, "word pieces kept per item text")
    history_tokens: int = _opt(128, "token budget of the history text (history-text tower)")
    export_text_encoder: bool = _opt(
        True, "with --export and a frozen item encoder under the item-sequence user tower: write the encoder and "
              "its tokenizer to <run>/text_encoder/ (a SavedModel the size of the encoder's weights), so that "
              "catalog updates encode new texts without importing transformers (without it, a run's first "
              "catalog update writes it)")
    cache_text_vectors: bool = _opt(
        True, "keep a frozen encoder's item text vectors on disk ($TFREC_LM_CACHE/text_vectors, keyed by the "
              "item tokens and the encoder weights), so later runs over the same catalog skip encoding it")

    text_tuning_steps: int = _opt(
        0, "before the recommender trains, tune the frozen item encoder's top --text-tuning-layers layers for "
           "this many steps on the texts of items consumed one after the other (in-batch contrastive, lower "
           "layers' token states cached; tfrec_lm.models.text_tuning), then freeze it again and cache its "
           "vectors: the encoder fine-tuning that fits a CPU. 0: off")
    text_tuning_layers: int = _opt(1, "top transformer layers of the item encoder that --text-tuning-steps tunes")
    text_tuning_batch_size: int = _opt(128, "anchor items per text-tuning step (each with one co-consumed partner)")
    text_tuning_learning_rate: float = _opt(1e-4, "Adam learning rate of text tuning")

    # Model
    user_tower: str = _opt(
        "item-sequence",
        "user tower: `item-sequence` (encoded history items composed by a small transformer) "
        "or `history-text` (BERT over the history's concatenated texts)",
        ("item-sequence", "history-text"),
    )
    embedding_dim: int = _opt(64, "width of the user and item embeddings")
    item_ids: bool = _opt(True, "hybrid: add a trainable item-ID embedding to the item text embedding")
    item_text: bool = _opt(True, "use the item text encoder (--no-item-text gives the ID-only ablation)")
    cold_items: str = _opt(
        "text", "items with no training positive: `text` (represented by their text and a learned no-ID vector "
                "instead of an untrained ID embedding, and left out of the catalog negatives that would bury "
                "them) or `id` (their ID embedding, and negatives like any item, no --id-dropout: the model before "
                "cold items)",
        ("text", "id"))
    id_dropout: float = _opt(
        0.0, "with --cold-items text: chance that a training step represents a warm item as a cold one (text "
              "and the no-ID vector), so the text-only path that new items take is trained to stand on its own")
    cold_neighbours: int = _opt(
        5, "with --cold-items text, where the model is used (evaluation, export, catalog updates; not in "
            "training; a frozen encoder): a cold item's ID part is the mix of the trained ID embeddings of the "
            "warm items whose encoder text vectors are nearest to its own (cosine), this many of them, weighted by "
            "count ** --cold-popularity; 0: the learned no-ID vector (the model before)")
    cold_popularity: float = _opt(
        2.0, "with --cold-neighbours: the power of each neighbour's training interaction count in the mix; "
             "0 weighs the neighbours equally, larger values let a new item take after its most consumed "
             "look-alikes (and surface more often)")
    item_fusion: str = _opt(
        "sum", "how an item's text and ID parts add up: `sum` (the projected text vector plus the ID embedding), "
               "`balanced` (each part LayerNorm-ed before the sum, so the text's larger scale does not drown "
               "the IDs) or `evidence` (a sum whose ID part is shrunk toward the mix of --cold-neighbours text "
               "neighbours' IDs that cold items get, in training too: a * own ID + (1 - a) * mix, a = n / (n + "
               "--evidence-shrinkage) for an item with n training interactions, 0 for a cold one; needs a frozen "
               "encoder, the item text and IDs, --cold-items text and --cold-neighbours >= 1) or `gated` (g * "
               "the text part + the ID part, the gate g = sigmoid(a * log(1 + n) + b) learned in training, a and b "
               "starting at 0 and 4 so g starts at 0.98, for an item with n training interactions; 1 for a cold "
               "item, whose text is all it has; needs the item text and IDs)",
        ("sum", "balanced", "evidence", "gated"))
    evidence_shrinkage: float = _opt(
        10.0, "k of --item-fusion evidence (> 0): an item with k training interactions takes half its ID part "
              "from its own embedding and half from its text neighbours'")
    text_whitening: str = _opt(
        "none", "what the item tower does to the frozen text vectors before its projection: `none` (as they are), "
                "`center` (the mean of the training items' vectors subtracted) or `whiten` (BERT-whitening, Su et "
                "al. 2021: centred, then rotated and scaled so the training items' vectors have identity "
                "covariance); the mean and the matrix are computed once when the cache is filled and kept by "
                "warm starts and catalog updates; needs a frozen encoder and the item text",
        ("none", "center", "whiten"))
    id_lr_multiplier: float = _opt(
        1.0, "the item-ID embeddings learn this many times faster than the other weights (stored divided by it): "
             "with Adam an ID coordinate otherwise moves about one learning rate per step while the shared text "
             "projection moves every item at once")
    item_bias: bool = _opt(
        False, "a learned per-item score bias, initialised at the log of the item's share of training targets "
               "(centred), added to the softmax logits and to every served score (the item embeddings carry it "
               "as one more column); cold items share a learned no-ID bias")
    num_blocks: int = _opt(1, "transformer blocks of the item-sequence tower")
    num_heads: int = _opt(2, "attention heads of the item-sequence tower")
    sequence_pooling: str = _opt(
        "newest", "item-sequence output: `newest` (the latest item's position after recency-aware attention), "
                  "`mean` (the same transformer with no position or time: an order-free set) or `bag` (the "
                  "mean of the item vectors, no attention: a bag of items)", ("newest", "mean", "bag"))
    time_features: bool = _opt(
        True, "item-sequence: add a learned embedding of each history item's age (seconds before the newest "
              "history item, in log-spaced buckets from one second to a year); read by the item-sequence tower with "
              "--sequence-pooling newest, ignored by the order-free poolings and the history-text tower")
    long_short: bool = _opt(
        False, "item-sequence: gate a short-term view (the transformer over the --short-window newest items) "
               "and a long-term view (the mean of all --max-history items) per dimension")
    short_window: int = _opt(10, "items in the short-term view of --long-short")
    dropout: float = _opt(0.1, "dropout rate")
    similarity: str = _opt(
        "cosine", "user-item score: `cosine` (both embeddings L2-normalised, logits = cosine / --temperature) or "
                  "`dot` (raw dot product of unnormalised embeddings, SASRec's; the norms can carry popularity; "
                  "use --temperature 1)", ("cosine", "dot"))
    temperature: float = _opt(0.10025382307989233,
                              "softmax temperature of the retrieval loss: logits are the scores divided by it")
    negatives: str = _opt(
        "catalog",
        "retrieval negatives: `catalog` (exact softmax over every item; needs a cached item "
        "encoder) or `in-batch` (the batch's items, with popularity log-Q correction)",
        ("catalog", "in-batch"),
    )
    history_negatives: bool = _opt(
        False, "make the query's own history items negatives of its retrieval softmax, as the earlier default did "
               "(off by default: the evaluation and the served top-k never rank history items, so training need "
               "not push down the items most like the next one)")
    logit_adjustment: float = _opt(
        0.0, "TAU of the logit adjustment (Menon et al. 2021; Yi et al. 2019's popularity correction): the "
             "training softmax's logit of every candidate item, after the temperature, gets + TAU * log of its "
             "smoothed share of training targets, in both --negatives (beside in-batch log-Q); it acts on "
             "the training loss only, served and evaluated scores are unchanged, so their ranking leans away from "
             "popular items; 0 is off; must be >= 0")
    retrieval_weight: float = _opt(1.0, "weight of the TFRS Retrieval loss")
    ranking_weight: float = _opt(0.1, "weight of the TFRS Ranking (rating regression) loss")

    # Training
    epochs: int = _opt(10, "maximum epochs (early stopping on validation NDCG@10 may end sooner)")
    batch_size: int = _opt(128, "examples per step")
    steps_per_epoch: Optional[int] = _opt(
        None, "validate, checkpoint and check the time budget every this many steps instead of once per "
              "pass over the data (for long epochs: large data, a BERT user tower on CPU)")
    learning_rate: float = _opt(0.001485587596644577, "AdamW learning rate")
    lr_decay: str = _opt(
        "cosine", "learning-rate schedule: `constant`, or `cosine` (from --learning-rate down to 0 along a "
                    "cosine over the whole run's steps, --epochs times the steps of an epoch; with --keep-weights "
                    "best, early stopping may end the run before it reaches 0)", ("constant", "cosine"))
    weight_decay: float = _opt(1e-4, "AdamW decoupled weight decay")
    patience: int = _opt(3, "epochs without validation NDCG@10 gain before stopping")
    keep_weights: str = _opt(
        "last", "the epoch whose weights the run keeps (its checkpoint, test metrics and export): `best` "
                "validation NDCG@10, training stopping after --patience epochs without a gain, or `last` (all "
                "--epochs train, --patience is unused; validation NDCG@10 is still logged)", ("best", "last"))
    max_train_examples: Optional[int] = _opt(None, "subsample training examples (most recent first kept)")
    time_budget_minutes: Optional[float] = _opt(None, "stop training after this many minutes (checked per epoch)")
    seed: int = _opt(42, "random seed")
    backup_steps: Optional[int] = _opt(
        500, "also back up the training state (model, optimizer, epoch and step; <output-dir>/backup) every "
             "this many steps, besides every epoch end, so that re-running the same command after the run "
             "died resumes mid-epoch; 0 (or null in a config file): epoch ends only. The backup is removed once metrics.json "
             "is written")

    # Performance and scale
    strategy: str = _opt(
        "default",
        "tf.distribute strategy: `default` (one device), `mirrored` (every local GPU, or CPU), `multi-worker` "
        "(MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG environment variable); "
        "--batch-size is the global batch, split across the replicas",
        ("default", "mirrored", "multi-worker"),
    )
    mixed_precision: str = _opt(
        "float32",
        "Keras dtype policy: `float32`, `mixed_bfloat16` (bfloat16 compute; Ampere or newer GPUs, TPUs) or "
        "`mixed_float16` (float16 compute with loss scaling; older GPUs). Logits, losses and the output "
        "projections stay float32",
        ("float32", "mixed_float16", "mixed_bfloat16"),
    )
    jit_compile: bool = _opt(False, "XLA-compile the training step (model.compile(jit_compile=True))")
    warm_start: Optional[str] = _opt(
        None, "start from a training checkpoint: a run's --output-dir, or a checkpoint prefix "
              "(<output-dir>/checkpoints/best.weights); the model options must match that run")
    since: Optional[int] = _opt(None, "train only on interactions at or after this time, Unix seconds or an ISO "
                                      "date such as 1998-03-01 (UTC) (a refresh; "
                                      "histories still include everything before)")
    replay: float = _opt(0.0, "with --since: also train on this many older training interactions per new one, "
                              "drawn at random without replacement (experience replay, so a refresh does not "
                              "forget what the older interactions taught)")

    # Output
    output_dir: str = _opt("runs/tfrec_lm", "checkpoints, TensorBoard logs and metrics.json. A folder that holds "
                                            "a run of other options or data is refused (see --resume, "
                                            "--overwrite); left at its default, a run of other options gets "
                                            "runs/<model-name>-<options hash> instead")
    resume: bool = _opt(False, "continue the backup of a killed run in --output-dir even though the options "
                               "differ (e.g. more --epochs); the same options resume without it")
    overwrite: bool = _opt(False, "replace the run in --output-dir (its checkpoint, metrics and backup); its "
                                  "export versions stay")
    export_base: str = _opt("exports", "SavedModel base path: <export_base>/<model_name>/<version>/")
    model_name: str = _opt("tfrec_lm", "model name in the export path and in TF Serving")
    export: bool = _opt(True, "write the SavedModel after training")
    index: str = _opt("scann", "top-k layer of serving_default: `scann` or `brute-force` (stock TF Serving)", ("scann", "brute-force"))
    top_k: int = _opt(10, "K of serving_default")
    publish: str = _opt(
        "if-better",
        "the publishing gate, when --export-base already serves a version: `if-better` scores the new model "
        "and the served version on the same validation requests and publishes only when the new one is at "
        "least as good (NDCG@10), `always` publishes after scoring both, `never` writes to --staging-base only",
        ("if-better", "always", "never"))
    staging_base: Optional[str] = _opt(None, "where a version the gate does not publish is written: "
                                             "<staging_base>/<model_name>/<version>/ (default: <export-base>-staging)")

    def validate(self) -> "TrainConfig":
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            value = getattr(self, field.name)
            if choices and value not in choices:
                raise ConfigError(f"{field.name}={value!r} is not one of {', '.join(choices)}")
        positive = ["max_history", "max_item_tokens", "history_tokens", "embedding_dim", "num_blocks",
                    "num_heads", "epochs", "batch_size", "top_k", "trainable_layers", "text_tuning_layers",
                    "text_tuning_batch_size", "lora_rank", "lora_refresh_steps"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.backup_steps is not None and self.backup_steps < 0:
            raise ConfigError(f"backup_steps must be >= 0 (0: back up at epoch ends only), got {self.backup_steps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.id_lr_multiplier <= 0:
            raise ConfigError(f"id_lr_multiplier must be > 0, got {self.id_lr_multiplier}")
        if not self.evidence_shrinkage > 0:
            raise ConfigError(f"evidence_shrinkage must be > 0, got {self.evidence_shrinkage}")
        if self.item_fusion == "evidence":
            missing = [flag for flag, ok in (("--finetune frozen", self.finetune == "frozen"),
                                             ("--item-text", self.item_text), ("--item-ids", self.item_ids),
                                             ("--cold-items text", self.cold_items == "text"),
                                             ("--cold-neighbours >= 1", self.cold_neighbours >= 1)) if not ok]
            if missing:
                raise ConfigError(f"--item-fusion evidence shrinks each item's ID embedding toward its frozen-text "
                                  f"neighbours' IDs and needs {', '.join(missing)}")
        if self.item_fusion == "gated":
            missing = [flag for flag, ok in (("--item-text", self.item_text), ("--item-ids", self.item_ids)) if not ok]
            if missing:
                raise ConfigError(f"--item-fusion gated scales each item's text part by a learned gate on its "
                                  f"training interactions and needs {', '.join(missing)}")
        if self.text_whitening != "none":
            missing = [flag for flag, ok in (("--finetune frozen", self.finetune == "frozen"),
                                             ("--item-text", self.item_text)) if not ok]
            if missing:
                raise ConfigError(f"--text-whitening {self.text_whitening} transforms the item tower's cached "
                                  f"frozen-encoder text vectors and needs {', '.join(missing)}")
        if not (math.isfinite(self.logit_adjustment) and self.logit_adjustment >= 0):
            raise ConfigError(f"logit_adjustment must be a finite number >= 0 (0 is off), got {self.logit_adjustment}")
        if self.cold_neighbours < 0:
            raise ConfigError(f"cold_neighbours must be >= 0, got {self.cold_neighbours}")
        if self.cold_popularity < 0:
            raise ConfigError(f"cold_popularity must be >= 0, got {self.cold_popularity}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ConfigError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.temperature <= 0 or self.learning_rate <= 0:
            raise ConfigError("temperature and learning_rate must be > 0")
        if self.long_short and (self.user_tower != "item-sequence" or self.sequence_pooling != "newest"):
            raise ConfigError("--long-short needs --user-tower item-sequence with --sequence-pooling newest "
                              "(its short-term view reads the order of the history)")
        if self.long_short and not 1 <= self.short_window <= self.max_history:
            raise ConfigError(f"short_window must be in [1, max_history={self.max_history}], got {self.short_window}")
        if self.replay < 0:
            raise ConfigError(f"replay must be >= 0, got {self.replay}")
        if self.replay and self.since is None:
            raise ConfigError("--replay mixes older interactions into a refresh and needs --since")
        if self.text_tuning_steps < 0 or self.text_tuning_learning_rate <= 0:
            raise ConfigError("text_tuning_steps must be >= 0 and text_tuning_learning_rate > 0")
        if self.text_tuning_steps and (self.finetune != "frozen" or not self.item_text):
            raise ConfigError("--text-tuning-steps tunes the item encoder before training and then caches it: it "
                              "needs --finetune frozen and the item text")
        if self.text_tuning_steps and self.strategy != "default":
            raise ConfigError("--text-tuning-steps runs on one device before training (workers would tune on "
                              "different shards): use --strategy default")
        if not (self.item_text or self.item_ids):
            raise ConfigError("--no-item-text needs --item-ids: an item tower needs text, IDs or both")
        if self.data == "files" and not self.interactions:
            raise ConfigError("--data files needs --interactions PATH")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ConfigError(f"lora_alpha must be a finite number > 0 (default: the rank), got {self.lora_alpha}")
        if self.lora_negative_samples < 0:
            raise ConfigError(f"lora_negative_samples must be >= 0 (0: the positives only), got "
                              f"{self.lora_negative_samples}")
        if self.finetune == "lora":
            missing = [flag for flag, ok in (
                ("the item text", self.item_text), ("--user-tower item-sequence", self.user_tower == "item-sequence"),
                ("--negatives catalog", self.negatives == "catalog"),
                ("--strategy default", self.strategy == "default"),
                ("--mixed-precision float32", self.mixed_precision == "float32"),
                ("no --jit-compile", not self.jit_compile)) if not ok]
            if missing:
                raise ConfigError(f"--finetune lora trains adapters of the item encoder's top layers over the "
                                  f"catalog's cached lower-layer states, with catalog negatives from a periodically "
                                  f"refreshed table, on one device in float32; it needs {', '.join(missing)}")
        if self.negatives == "catalog" and self.finetune not in ("frozen", "lora"):
            raise ConfigError(
                "--negatives catalog re-encodes the whole catalog each step and needs --finetune frozen (or lora, "
                "which caches it); use --negatives in-batch for full or top-k fine-tuning"
            )
        if self.jit_compile and self.user_tower == "history-text":
            raise ConfigError(
                "--jit-compile needs --user-tower item-sequence: the history-text tower composes ragged "
                "token sequences (RaggedRange), which XLA cannot compile")
        return self

    @property
    def reads_item_ages(self) -> bool:
        """Whether the user tower this config builds reads the history's timestamps."""
        return self.time_features and self.user_tower == "item-sequence" and self.sequence_pooling == "newest"

    @property
    def staging(self) -> str:
        """The staging base: `staging_base`, or `<export_base>-staging`. str."""
        return self.staging_base or f"{Path(self.export_base)}-staging"

    def options(self) -> dict:
        """The options that make a run what it is: every field but `RUN_CONTROL` ones. dict."""
        values = self.to_dict()
        for name in RUN_CONTROL:
            values.pop(name, None)
        return json.loads(json.dumps(values))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, base: Optional["TrainConfig"] = None) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        values = {name: _check_type(name, value, hints[name]) for name, value in values.items()}
        base = base or cls()
        return dataclasses.replace(base, **values).validate()


# How a run is carried out, not what it trains: a finished run re-run with other values of
# these is the same run (its identity, `TrainConfig.options`, leaves them out).
RUN_CONTROL = ("backup_steps", "resume", "overwrite", "publish", "staging_base", "export_text_encoder")

# Options that shape the checkpoint's variables: a warm start must keep the warm-started run's.
SHAPE_OPTIONS = ("encoder", "max_history", "max_item_tokens", "user_tower", "embedding_dim", "item_ids",
                 "item_text", "cold_items", "item_fusion", "text_whitening", "item_bias", "num_blocks", "num_heads",
                 "sequence_pooling", "time_features", "long_short", "short_window", "similarity",
                 "text_tuning_steps", "text_tuning_layers")
# A refresh's own options: everything else defaults to the warm-started run's.
REFRESH_OWN = ("output_dir", "warm_start", "since", "replay") + RUN_CONTROL

PRESETS: dict[str, dict[str, Any]] = {
    # Frozen encoder, cached item texts, exact catalog softmax: trains in minutes on 2 cores.
    "cpu": {},
    # A GPU fine-tunes the encoder; in-batch negatives keep each step to the batch's items.
    # bfloat16 compute (Ampere or newer: tensor cores, float32's range, no loss scaling);
    # older GPUs want --mixed-precision mixed_float16. XLA stays off: unmeasured on a GPU.
    "gpu": {"finetune": "full", "negatives": "in-batch", "batch_size": 128, "learning_rate": 5e-5,
            "epochs": 10, "mixed_precision": "mixed_bfloat16"},
    # Best trial of the budgeted Bayesian KerasTuner search on MovieLens-100K validation NDCG@10
    # (benchmarks/results/tuning_quality.json, trial 4) as the search ran it: the default's values
    # with issue 12's ID dropout 0.25, a constant learning rate and the best validation epoch kept.
    "ml100k-tuned": {"learning_rate": 0.001485587596644577, "batch_size": 128, "temperature": 0.10025382307989233,
                     "dropout": 0.1, "id_dropout": 0.25, "lr_decay": "constant", "keep_weights": "best"},
    # Seconds-long runs for tests and the notebook.
    "tiny": {"epochs": 1, "batch_size": 64, "max_history": 10, "embedding_dim": 16,
             "max_item_tokens": 12, "history_tokens": 48, "patience": 1},
}


def load_config_file(path: str | Path) -> dict:
    """Reads a YAML or JSON config file into a dict of option values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    bad = [key for key in values if not isinstance(key, str)]
    if bad:
        raise ConfigError(f"config file {path} has non-text keys: {', '.join(map(repr, bad))}")
    return {key.replace("-", "_"): value for key, value in values.items()}


def resolve_config(preset: str = "cpu", config_file: Optional[str | Path] = None,
                   overrides: Optional[dict] = None, base: Optional[dict] = None) -> TrainConfig:
    """The one merge of option sources for every CLI: defaults < base < preset < config file < overrides.

    Args:
        preset: str. a key of `PRESETS`.
        config_file: str | Path | None. a YAML or JSON file of options.
        overrides: dict | None. option values that win over everything (command-line flags).
        base: dict | None. option values over the defaults (a refresh: the warm-started run's
            options, `refresh_base`).

    Returns:
        TrainConfig. validated.

    Raises:
        ConfigError: an unknown preset or key, a value of the wrong type, or an invalid
            combination.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    values = dict(base or {})
    values.update(PRESETS[preset])
    if config_file:
        values.update(load_config_file(config_file))
    values.update(overrides or {})
    return TrainConfig.from_dict(values)


def refresh_base(run_options: dict) -> dict:
    """The options a refresh starts from: the warm-started run's, less a refresh's own (`REFRESH_OWN`). dict."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return {key: value for key, value in run_options.items() if key in known and key not in REFRESH_OWN}


def shape_conflicts(config: TrainConfig, run_options: dict) -> list[str]:
    """The `SHAPE_OPTIONS` on which `config` differs from a warm-started run's options.

    With `--item-fusion evidence` `cold_neighbours` shapes the checkpoint too (the width of
    the item tower's neighbour table); with `--finetune lora` (here or in the run) `finetune`,
    `trainable_layers` and `lora_rank` do (the adapters' variables).

    Args:
        config: TrainConfig. the refresh's options.
        run_options: dict. the warm-started run's recorded options.

    Returns:
        list of str. `--name X (the run: Y)` for each.
    """
    names = SHAPE_OPTIONS + (("cold_neighbours",) if config.item_fusion == "evidence" else ())
    if "lora" in (config.finetune, run_options.get("finetune")):  # the adapters are checkpoint variables
        names += ("finetune", "trainable_layers", "lora_rank")
    return [f"--{name.replace('_', '-')} {getattr(config, name)!r} (the run: {run_options[name]!r})"
            for name in names if name in run_options and run_options[name] != getattr(config, name)]
