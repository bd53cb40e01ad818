"""`Recommender`: an export version queried in-process, by item ids or by exact titles.

    from tfrec_lm import Recommender

    model = Recommender.load("exports/tfrec_lm")         # the newest version of a model
    model.recommend(["Star Wars", "Fargo"], k=5)          # titles or item ids, oldest first
    model.rank(["50", "100"], candidates=["1", "181", "no-such-id"])
    model.similar("Star Wars", k=5)

The answers come from the export's own signatures (`explain`, or `serving_default` for an
export without it, and `rank`), so they are what TF Serving answers for the same request;
`similar` compares the export's item embeddings as `explain` does. Titles come from the
catalog the version carries (`assets.extra/tfrec_lm_catalog.parquet`); a version without
one answers with ids only (titles None).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfrec_lm.protocol import history_batch, spaced_timestamps
from tfrec_lm.registry.layout import ASSETS_EXTRA, EXPORT_CATALOG_FILE, METRICS_FILE
from tfrec_lm.registry.model_versions import ModelVersions, read_manifest

logger = logging.getLogger(__name__)


class Recommender:
    """One export version (a SavedModel of `tfrec_lm.serving_module.ServingModule`), in-process.

    Build one with `Recommender.load`. Histories are oldest item first; each entry is an
    item id, or an item's exact title (when the version carries its catalog). Timestamps
    are Unix seconds, one per history item; without them every item gets 0, as the
    client's requests do (`tfrec_lm.protocol.history_batch`), which the model reads as
    one session.

    Attributes:
        path: Path. the version folder.
        manifest: dict. the version's manifest (`{}` for an export without one).
        top_k: int. K of the version's `serving_default` (the most `recommend` returns).
        item_ids: list of str. the version's items, vocabulary order.
    """

    def __init__(self, path: Path, loaded, catalog=None):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._loaded = loaded
        self._signatures = loaded.signatures
        keys, values = _table_contents(loaded.lookup)
        order = np.argsort(values)
        self.item_ids = [keys[i] for i in order]
        self._index = {item: int(value) for item, value in zip(keys, values)}
        embeddings = loaded.item_embeddings.numpy()
        width = (self.manifest.get("config") or {}).get("embedding_dim")
        if not isinstance(width, int) or not 0 < width <= embeddings.shape[1]:
            width = embeddings.shape[1]  # an item-bias column is not part of an item's likeness
        self._likeness = _l2_normalize(embeddings[:, :width])
        self.top_k = int(self._signatures["serving_default"].structured_outputs["item_ids"].shape[1])
        self._titles: dict = {}
        self._by_title: dict = {}
        if catalog is not None:
            for item, title in zip(catalog["item_id"].astype(str), catalog["title"].astype(str)):
                self._titles[item] = title
                self._by_title.setdefault(title, []).append(item)
        self._servable = self._servable_items()

    def __repr__(self) -> str:
        return f"Recommender({str(self.path)!r}, items={len(self.item_ids)}, top_k={self.top_k})"

    @classmethod
    def load(cls, path, model_name: Optional[str] = None) -> "Recommender":
        """Loads an export version.

        Args:
            path: str | Path. one of:
                - a version folder, `<export_base>/<model_name>/<version>` (holds `saved_model.pb`);
                - a model folder, `<export_base>/<model_name>`, or an export base holding one
                  model (or `model_name`): its newest version, the one TF Serving serves;
                - a training run's `--output-dir`: the version its `metrics.json` records
                  (published, or held in staging by the publishing gate).
            model_name: str or None. the model under an export base that holds several.

        Returns:
            Recommender.

        Raises:
            FileNotFoundError: nothing there to load (no version, or a run that recorded no export).
            ValueError: an export base with several models and no `model_name`.
        """
        import tensorflow as tf  # tfrec_lm's import set TF_USE_LEGACY_KERAS before it

        from tfrec_lm.scann_ops import load_scann_ops

        version = resolve_version(path, model_name)
        manifest = read_manifest(version)
        load_scann_ops(required=manifest.get("index") == "scann")
        catalog_file = version / ASSETS_EXTRA / EXPORT_CATALOG_FILE
        catalog = None
        if catalog_file.is_file():
            from tfrec_lm.catalog.table import read_catalog

            catalog = read_catalog(catalog_file)
        else:
            logger.info("%s carries no catalog: answers have ids but no titles", version)
        logger.info("loading %s", version)
        return cls(version, tf.saved_model.load(str(version)), catalog)

    # ------------------------------------------------------------------ queries

    def recommend(self, history: Sequence, k: int = 10, timestamps: Optional[Sequence[int]] = None) -> list[dict]:
        """The top-k items for one user, none from the history, best first.

        Args:
            history: sequence of item ids or exact titles, oldest first (empty: the most
                popular items).
            k: int. how many, at most the version's `top_k`.
            timestamps: sequence of int or None. Unix seconds, one per history item (None:
                the newest item now, each older one a minute earlier, as the client sends).

        Returns:
            list of dict. one per item: `item_id`, `title` (None without a catalog), `score`,
            and the "because you watched" explanation, the history item most like it:
            `because_item_id`, `because_title`, `because_similarity` (cosine); all three
            None for an empty history or an export without the `explain` signature. Fewer
            than k only when the history covers nearly the whole catalog.

        Raises:
            ValueError: an unknown id or title (named), k out of range, or timestamps that
                do not match the history.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.top_k:
            raise ValueError(f"k must be an integer from 1 to {self.top_k} (the K this export was made with, "
                             f"--top-k), got {k!r}")
        ids = self._resolve(history)
        inputs = self._inputs(ids, timestamps)
        explained = "explain" in self._signatures
        outputs = self._signatures["explain" if explained else "serving_default"](**inputs)
        items = _strings(outputs["item_ids"][0])
        scores = outputs["scores"][0].numpy()
        because = _strings(outputs["because_item_ids"][0]) if explained else [""] * len(items)
        similarity = outputs["because_similarity"][0].numpy() if explained else np.zeros(len(items))
        results = []
        for item, score, reason, like in zip(items, scores, because, similarity):
            if item == "":  # an empty slot: the history covers nearly every item
                continue
            results.append({"item_id": item, "title": self._titles.get(item), "score": float(score),
                            "because_item_id": reason or None, "because_title": self._titles.get(reason),
                            "because_similarity": float(like) if reason else None})
        return results[:k]

    def rank(self, history: Sequence, candidates: Sequence, timestamps: Optional[Sequence[int]] = None) -> dict:
        """Scores given candidates for one user (the `rank` signature), best first.

        Args:
            history: sequence of item ids or exact titles, oldest first.
            candidates: sequence of item ids (or exact titles); ones the version does not
                know, or has retired, are not an error: they get score None.
            timestamps: sequence of int or None. Unix seconds, one per history item (None:
                the newest item now, each older one a minute earlier, as the client sends).

        Returns:
            dict. `results`: one dict per candidate, `item_id`, `title`, `score`,
            `predicted_rating` (None for unknown ones), best score first, unknown ones
            last in the order given; `unknown_item_ids`: the candidates the version
            cannot score (unknown or retired), as given.

        Raises:
            ValueError: an unknown history id or title (named), or timestamps that do not
                match the history.
        """
        import tensorflow as tf

        from tfrec_lm.serving_module import LOWEST_SCORE  # how the export scores what it cannot rank

        if isinstance(candidates, (str, bytes)):
            raise ValueError("candidates must be a sequence of item ids, not one string")
        ids = self._resolve(history)
        given = [str(c) for c in candidates]
        resolved = [self._known_id(c) or c for c in given]
        if not given:
            return {"results": [], "unknown_item_ids": []}
        inputs = self._inputs(ids, timestamps)
        outputs = self._signatures["rank"](**inputs, candidate_item_ids=tf.constant([resolved]))
        scores = outputs["scores"][0].numpy()
        ratings = outputs["predicted_ratings"][0].numpy() if "predicted_ratings" in outputs else [None] * len(given)
        known, unknown = [], []
        for raw, item, score, rating in zip(given, resolved, scores, ratings):
            if score <= LOWEST_SCORE:
                unknown.append({"item_id": raw, "title": None, "score": None, "predicted_rating": None})
            else:
                known.append({"item_id": item, "title": self._titles.get(item), "score": float(score),
                              "predicted_rating": None if rating is None else float(rating)})
        known.sort(key=lambda result: -result["score"])
        return {"results": known + unknown, "unknown_item_ids": [result["item_id"] for result in unknown]}

    def similar(self, item, k: int = 10) -> list[dict]:
        """The k items most like one item: the cosine of their item embeddings, as `explain` measures it.

        Args:
            item: str. an item id or exact title.
            k: int. how many (fewer when the catalog has fewer other items to recommend).

        Returns:
            list of dict. `item_id`, `title`, `similarity`, most similar first; never the
            item itself or a retired item.

        Raises:
            ValueError: an unknown id or title (named), or k below 1.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        (item_id,) = self._resolve([item])
        row = self._index[item_id]
        similarity = self._likeness @ self._likeness[row]
        allowed = self._servable.copy()
        allowed[row] = False
        order = [int(i) for i in np.argsort(-similarity, kind="stable") if allowed[i]][:k]
        return [{"item_id": self.item_ids[i - 1], "title": self._titles.get(self.item_ids[i - 1]),
                 "similarity": float(similarity[i])} for i in order]

    # ------------------------------------------------------------------ helpers

    def _known_id(self, value: str) -> Optional[str]:
        """The item id `value` names (an id, or an unambiguous exact title), None for none."""
        if value in self._index:
            return value
        matches = self._by_title.get(value, [])
        if len(matches) > 1:
            raise ValueError(f"the title {value!r} names {len(matches)} items ({', '.join(matches[:10])}): "
                             "give its item id")
        return matches[0] if matches else None

    def _resolve(self, values: Sequence) -> list[str]:
        if isinstance(values, (str, bytes)):
            raise ValueError("a history is a sequence of item ids or titles, not one string")
        given = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
        resolved = [self._known_id(value) for value in given]
        unknown = [value for value, item in zip(given, resolved) if item is None]
        if unknown:
            what = "item ids or exact titles" if self._titles else "item ids (this version has no catalog of titles)"
            raise ValueError(f"{len(unknown)} unknown item(s): {', '.join(map(repr, unknown[:10]))}"
                             f"{' ...' if len(unknown) > 10 else ''}; {self.path} knows {len(self.item_ids)} {what}")
        return resolved

    def _inputs(self, ids: list[str], timestamps) -> dict:
        import tensorflow as tf

        if timestamps is not None:
            if isinstance(timestamps, (str, bytes)):
                raise ValueError("timestamps must be a sequence of Unix seconds")
            try:
                timestamps = [int(t) for t in timestamps]
            except (TypeError, ValueError):
                raise ValueError(f"timestamps must be integers (Unix seconds): {list(timestamps)[:5]!r}") from None
        if timestamps is None:  # as the client CLI: the newest item now, older ones a minute apart
            timestamps = spaced_timestamps([ids])[0]
        batch = history_batch([ids], [timestamps])
        return {"history_item_ids": tf.constant(batch["history_item_ids"].astype(str)),
                "history_timestamps": tf.constant(batch["history_timestamps"])}

    def _servable_items(self) -> np.ndarray:
        """bool [C+1]: the items the version may recommend (not padding, not retired), as `rank` scores them."""
        import tensorflow as tf

        from tfrec_lm.serving_module import LOWEST_SCORE

        servable = np.ones(len(self.item_ids) + 1, dtype=bool)
        servable[0] = False
        if "rank" in self._signatures and self.item_ids:
            outputs = self._signatures["rank"](history_item_ids=tf.constant([[""]]),
                                               history_timestamps=tf.constant([[0]], tf.int64),
                                               candidate_item_ids=tf.constant([self.item_ids]))
            servable[1:] = outputs["scores"][0].numpy() > LOWEST_SCORE
        return servable


def resolve_version(path, model_name: Optional[str] = None) -> Path:
    """The version folder that a version folder, a model folder, an export base or a run folder names.

    Args:
        path: str | Path. see `Recommender.load`.
        model_name: str or None. the model under an export base that holds several.

    Returns:
        Path. a folder with `saved_model.pb`.

    Raises:
        FileNotFoundError: nothing to load there.
        ValueError: an export base with several models and no `model_name`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such folder: {path}")
    if model_name is not None:
        path = path / model_name
    if (path / "saved_model.pb").is_file():
        return path
    if (path / METRICS_FILE).is_file():
        return _run_export(path)
    newest = ModelVersions.of(path).newest()
    if newest is not None:
        return _checked(ModelVersions.of(path).path(newest))
    models = sorted(p.name for p in path.iterdir() if p.is_dir() and ModelVersions.of(p).newest() is not None) \
        if path.is_dir() else []
    if len(models) == 1:
        versions = ModelVersions(path, models[0])
        return _checked(versions.path(versions.newest()))
    if len(models) > 1:
        raise ValueError(f"{path} holds several models ({', '.join(models)}): pass model_name=")
    raise FileNotFoundError(f"{path} is not an export version (no saved_model.pb), a model folder or export base "
                            f"with numbered versions, or a training run (no {METRICS_FILE})")


def _checked(version: Path) -> Path:
    if not (version / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{version} holds no saved_model.pb")
    return version


def _run_export(run: Path) -> Path:
    """The version a finished run recorded in its `metrics.json` (`export_path`).

    Relative paths in the record are relative to the folder the run was started from,
    found from the run's own recorded `output_dir`. A staged version that was published
    later (moved) is found in the served base by the run's id.
    """
    record = json.loads((run / METRICS_FILE).read_text())
    config = record.get("config") or {}
    started_in = _started_in(run, config.get("output_dir"))

    def located(value) -> Optional[Path]:
        if not value:
            return None
        value = Path(value)
        return value if value.is_absolute() else started_in / value

    exported = located(record.get("export_path"))
    if exported is not None and (exported / "saved_model.pb").is_file():
        return exported
    base, name, run_id = located(config.get("export_base")), config.get("model_name"), record.get("run_id")
    if base is not None and name and run_id:
        found = ModelVersions(base, name).find(run_id=run_id)
        if found is not None:
            return _checked(ModelVersions(base, name).path(found))
    if exported is None:
        raise FileNotFoundError(f"the run {run} recorded no export ({run / METRICS_FILE} has no export_path: "
                                "trained with --no-export?); export it, or load a version folder")
    raise FileNotFoundError(f"the run {run} recorded the export {exported}, which is gone (and no version of "
                            f"{base}/{name} has run_id {run_id}); load a version folder instead")


def _started_in(run: Path, output_dir) -> Path:
    """The working folder of the run's command: `run` minus its recorded relative `output_dir`."""
    run = run.resolve()
    if not output_dir or Path(output_dir).is_absolute():
        return run.parent
    parts = Path(output_dir).parts
    if run.parts[-len(parts):] == parts:
        return Path(*run.parts[:-len(parts)])
    return run.parent


def _table_contents(table) -> tuple[list, np.ndarray]:
    """The keys (str) and values of a loaded SavedModel's `StaticHashTable`."""
    import tensorflow as tf

    keys, values = tf.raw_ops.LookupTableExportV2(table_handle=table.resource_handle, Tkeys=tf.string,
                                                  Tvalues=tf.int32)
    return _strings(keys), values.numpy()


def _strings(tensor) -> list[str]:
    return [v.decode("utf-8") for v in np.asarray(tensor).reshape(-1)]


def _l2_normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)
