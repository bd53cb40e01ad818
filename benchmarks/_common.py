"""Helpers shared by the benchmark scripts: machine/version info and JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# Where `write_result` writes (the suite runner's --quick points it at results/quick/);
# RESULTS stays the committed results, which some benchmarks read.
RESULTS_ENV = "TFREC_LM_BENCH_RESULTS"


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or RESULTS)


def environment() -> dict:
    import tensorflow as tf
    import tensorflow_recommenders as tfrs
    import transformers

    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tensorflow_recommenders": tfrs.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_result(name: str, payload: dict) -> Path:
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), **payload}, indent=2,
                               default=float))
    return path


def parse_sets(values) -> dict:
    """`--set KEY=VALUE ...` into config changes (values parsed as YAML: 1e-3, true, 64)."""
    import yaml

    changes = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        changes[key.replace("-", "_")] = yaml.safe_load(value)
    return changes
