"""The training run's export (SPEC §3): its `ServingModule`, through the publishing gate, as the next version."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from tfrec_lm.catalog.table import catalog_extras
from tfrec_lm.registry.gate import GateDecision, PublishGate
from tfrec_lm.registry.manifest import build_manifest
from tfrec_lm.registry.validation import ValidationRequests
from tfrec_lm.registry.model_versions import ModelVersions
from tfrec_lm.serving_module import ServingModule

logger = logging.getLogger(__name__)


def export_model(result, config, catalog=None, run_dir=None, run_id: Optional[str] = None,
                 validation: Optional[ValidationRequests] = None, data: Optional[dict] = None,
                 command: Optional[str] = None, module: Optional[ServingModule] = None) -> GateDecision:
    """Exports a `TrainResult` per SPEC §3 with the config's index and K, through the publishing gate.

    A version this run already published (a run killed after its export was renamed into
    place and before its record was written) is not written again: its decision is returned.

    Args:
        result: TrainResult. the trained model, vocabulary and popularity.
        config: TrainConfig. reads `top_k`, `index`, `export_base`, `model_name`, `publish`, `staging_base`.
        catalog: pd.DataFrame or None. the catalog behind the version, kept in it for catalog updates.
        run_dir: Path or None. the run's output folder, recorded in the manifest.
        run_id: str or None. the run's id, recorded in the manifest.
        validation: ValidationRequests or None. what the gate scores the candidate and the served version on.
        data: dict or None. `tfrec_lm.registry.manifest.data_fingerprint` of the data trained on.
        command: str or None. the command line, for the manifest.
        module: ServingModule or None. the graph to export (default: built from `result`).

    Returns:
        GateDecision. its `path` is the version folder (served, or staging when held).
    """
    served = ModelVersions(config.export_base, config.model_name)
    staging = ModelVersions(config.staging, config.model_name)
    if run_id is not None:
        for versions, published in ((served, True), (staging, False)):
            done = versions.find(run_id=run_id)
            if done is not None:
                logger.warning("%s already holds this run's export (it was stopped before its record was "
                               "written): not exporting again", versions.path(done))
                return _decision_of(versions.manifest(done), versions.path(done), published, config.publish)
    if module is None:
        module = ServingModule(result.model, result.vocab.ids, result.counts, top_k=config.top_k, index=config.index)
    manifest = build_manifest("refresh" if config.warm_start else "train", config,
                              run_dir if run_dir is not None else config.output_dir, run_id, served.newest(), data,
                              module.num_items - 1, command, test_metrics=result.metrics)
    gate = PublishGate(served, staging, config.publish, validation)
    return gate.submit(lambda versions: versions.save(module, manifest, extras=catalog_extras(catalog)), config.top_k)


def _decision_of(manifest: dict, path: Path, published: bool, policy: str) -> GateDecision:
    """The gate's decision as a version's manifest recorded it. GateDecision."""
    gate = manifest.get("gate") or {}
    where = f"published as version {path.name}" if published else f"held in {path}"
    return GateDecision(policy=gate.get("policy", policy), published=published, path=path,
                        metric=gate.get("metric", "NDCG@10"), candidate=manifest.get("validation"),
                        served=gate.get("served"), served_version=gate.get("served_version"),
                        reason=f"already {where} by this run.", window=gate.get("window", "validation"),
                        tolerance=gate.get("tolerance", 0.0))
