"""`PublishGate`: a new version reaches the served export base only when its policy allows it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Optional

from tfrec_lm.registry.validation import ValidationRequests
from tfrec_lm.registry.model_versions import ModelVersions, read_manifest, write_manifest

logger = logging.getLogger(__name__)

POLICIES = ("if-better", "always", "never")


@dataclasses.dataclass
class GateDecision:
    """What the gate compared and decided.

    Attributes:
        policy: str. `if-better`, `always` or `never`.
        published: bool. the candidate is now the newest version of the served base.
        path: Path. where the candidate is (a served version, or a staging one).
        metric: str. the metric compared (`NDCG@10`; `NDCG@K` for an export of K < 10).
        candidate: dict or None. the candidate's validation metrics through its `serving_default`.
        served: dict or None. the served version's, on the same requests.
        served_version: int or None. the version that was being served.
        reason: str. one sentence: why it was or was not published.
        window: str. the requests compared on.
    """

    policy: str
    published: bool
    path: Path
    metric: str
    candidate: Optional[dict]
    served: Optional[dict]
    served_version: Optional[int]
    reason: str
    window: str = "validation"
    tolerance: float = 0.0

    def record(self) -> dict:
        """The manifest's `gate` entry. dict."""
        return {"policy": self.policy, "tolerance": self.tolerance, "decision": "published" if self.published else "held",
                "metric": self.metric, "candidate": self.candidate, "served": self.served,
                "served_version": self.served_version, "window": self.window, "reason": self.reason}

    def summary(self) -> str:
        """Two lines for a CLI: both scores, and what was done. str."""
        def show(values):
            return "-" if not values else f"{values[self.metric]:.4f}"

        served = ("no version served yet" if self.served_version is None else
                  f"served version {self.served_version} {self.metric} {show(self.served)}")
        return (f"publishing gate ({self.policy}, {self.window}): candidate {self.metric} {show(self.candidate)}; "
                f"{served}\n{self.reason}")


class PublishGate:
    """Scores a candidate and the served version on the same requests, then publishes or stages the candidate.

    Args:
        served: ModelVersions. the base a server watches (its newest version is served).
        staging: ModelVersions. where candidates are written first, and stay when not published.
        policy: str. `if-better` (publish when the candidate's NDCG@10 is at least the served
            version's), `always` (publish after scoring both) or `never` (stage only).
        validation: ValidationRequests or None. the requests both are scored on (None: nothing to
            score on; `if-better` then publishes only a model's first version).
        tolerance: float. the relative loss `if-better` accepts: the candidate passes with
            NDCG@10 >= (1 - tolerance) x the served one's. 0 for retrains and refreshes; a
            catalog update passes a small one, since its new items can only displace the
            validation targets (which are all known items) and never be one.
    """

    def __init__(self, served: ModelVersions, staging: ModelVersions, policy: str = "if-better",
                 validation: Optional[ValidationRequests] = None, tolerance: float = 0.0):
        if policy not in POLICIES:
            raise ValueError(f"publish policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if not 0.0 <= float(tolerance) < 1.0:
            raise ValueError(f"the gate's tolerance is a fraction in [0, 1), got {tolerance}")
        self.tolerance = float(tolerance)
        self.served = served
        self.staging = staging
        self.policy = policy
        self.validation = validation

    def submit(self, write: Callable[[ModelVersions], Path], top_k: int) -> GateDecision:
        """Writes the candidate to staging with `write`, scores it and the served version, and decides.

        Args:
            write: callable. `write(versions) -> Path` saves the candidate as a new version of
                `versions` (`ModelVersions.save`) and returns its folder.
            top_k: int. the candidate's K.

        Returns:
            GateDecision. the manifest of the candidate's folder holds its `validation` and `gate`.
        """
        served_version = self.served.newest()
        candidate_dir = write(self.staging)
        k = min(10, int(top_k))
        if served_version is not None:
            k = min(k, int(self.served.manifest(served_version).get("top_k") or k))
        metric = f"NDCG@{k}"
        window = self.validation.window if self.validation is not None else "none"
        candidate = served = None
        if self.validation is not None and len(self.validation):
            candidate = self.validation.score(candidate_dir, k)
            if served_version is not None:
                served = self.validation.score(self.served.path(served_version), k)
        published, reason = self._decide(served_version, candidate, served, metric)
        decision = GateDecision(policy=self.policy, published=published, path=candidate_dir, metric=metric,
                                candidate=candidate, served=served, served_version=served_version, reason=reason,
                                window=window, tolerance=self.tolerance)
        changes = {"validation": candidate, "gate": decision.record()}
        if published:
            decision.path = self.served.publish(candidate_dir, changes)
        else:
            write_manifest(candidate_dir, {**read_manifest(candidate_dir), **changes})
        logger.info("%s", decision.summary().replace("\n", "; "))
        return decision

    def _decide(self, served_version, candidate, served, metric) -> tuple[bool, str]:
        where = f"{self.served.model_dir}"
        if self.policy == "never":
            return False, f"--publish never: written to {self.staging.model_dir} only; {where} is unchanged."
        if self.policy == "always":
            return True, f"--publish always: published to {where}."
        if served_version is None:
            return True, f"the first version of {where}: published."
        if candidate is None or served is None:
            return False, (f"no validation requests to compare on, so --publish if-better holds it in "
                           f"{self.staging.model_dir}; pass --publish always to publish it anyway.")
        bar = served[metric] * (1.0 - self.tolerance)
        within = f" - {self.tolerance:.0%}" if self.tolerance else ""
        if candidate[metric] >= bar:
            return True, (f"the candidate is at least as good as version {served_version}{within} "
                          f"({candidate[metric]:.4f} >= {bar:.4f}): published to {where}.")
        return False, (f"the candidate is worse than version {served_version}{within} ({candidate[metric]:.4f} < "
                       f"{bar:.4f}), so it is held in {self.staging.model_dir}; pass --publish always "
                       "to publish it anyway.")
