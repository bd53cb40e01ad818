"""Tiny real exports for the serving tests and the smoke run of the latency benchmark.

One item-sequence model is trained for one epoch on `synthetic_migration()` with a tiny
random BERT (seconds, not minutes), then exported three ways:

    <root>/brute-force/tfrec_lm/1   --index brute-force, K = 5
    <root>/scann/tfrec_lm/1         --index scann,       K = 5
    <root>/staged/tfrec_lm/1        --index brute-force, K = 3  (a "version 2" to hot-swap in)

`tiny_exports()` builds them once per process and returns the same `TinyExports`
afterwards; callers must not modify these directories (copy them instead).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

K = 5
K_V2 = 3
MODEL_NAME = "tfrec_lm"

_CACHE: dict = {}


@dataclasses.dataclass
class TinyExports:
    """Paths and sample requests of the tiny exports.

    Attributes:
        root: Path.
        brute_force_base: Path. `<root>/brute-force/tfrec_lm` (version 1, K = 5).
        scann_base: Path. `<root>/scann/tfrec_lm` (version 1, K = 5).
        v2_export: Path. a complete K = 3 SavedModel to copy in as a new version.
        catalog: list of str. the item ids.
        histories: list of list of str. some users' test histories, oldest first.
    """

    root: Path
    brute_force_base: Path
    scann_base: Path
    v2_export: Path
    catalog: list
    histories: list
    k: int = K
    k_v2: int = K_V2


def _train(work: Path, num_users: int = 60):
    from tfrec_lm.bert import tiny_bert, tiny_tokenizer
    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.synthetic import synthetic_migration
    from tfrec_lm.training import train

    dataset, _ = synthetic_migration(num_users=num_users)
    tokenizer = tiny_tokenizer(dataset.items["text"].tolist(), work / "tokenizer")
    values = dict(PRESETS["tiny"])
    values.update(output_dir=str(work / "run"), export_base=str(work / "unused"), export=False,
                  user_tower="item-sequence", finetune="frozen", negatives="catalog", epochs=1, dropout=0.0)
    config = TrainConfig(**values).validate()
    return train(config, dataset=dataset, encoder_factory=lambda: (tiny_bert(tokenizer.vocab_size, seed=0), tokenizer))


def tiny_exports(directory=None) -> TinyExports:
    """Trains and exports once per process (about a minute on 2 CPU cores)."""
    if "exports" in _CACHE:
        return _CACHE["exports"]
    import tfrec_lm  # noqa: F401  (before TensorFlow)
    from tfrec_lm.registry.model_versions import ModelVersions
    from tfrec_lm.serving_module import ServingModule

    root = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="tfrec_lm_tiny_exports_"))
    root.mkdir(parents=True, exist_ok=True)
    result = _train(root / "work")
    ids, counts = result.vocab.ids, result.counts

    def export(kind: str, k: int, folder: str) -> Path:
        module = ServingModule(result.model, ids, counts, top_k=k, index=kind)
        return ModelVersions(root / folder, MODEL_NAME).save(module, {"index": kind, "top_k": k}, version=1)

    export("brute-force", K, "brute-force")
    export("scann", K, "scann")
    v2 = export("brute-force", K_V2, "staged")
    histories = [[str(ids[i]) for i in row if i] for row in result.split.test.history[:8]]
    exports = TinyExports(root=root, brute_force_base=root / "brute-force" / MODEL_NAME,
                          scann_base=root / "scann" / MODEL_NAME, v2_export=v2,
                          catalog=[str(v) for v in ids[1:]], histories=histories)
    _CACHE["exports"] = exports
    return exports
