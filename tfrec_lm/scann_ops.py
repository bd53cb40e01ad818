"""Registers ScaNN's TensorFlow ops, which loading a `--index scann` export needs (no other import)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def load_scann_ops(required: bool = True) -> bool:
    """Registers ScaNN's TensorFlow ops (needed to load a `--index scann` export).

    Args:
        required: bool. raise when the ops cannot be registered; False: log a warning and
            return False (the dev server, which may serve brute-force exports only).

    Returns:
        bool. True when the ops are registered.

    Raises:
        Exception: `required` and ScaNN is missing (ImportError) or its ops library was
            built for another TensorFlow.
    """
    try:
        import scann.scann_ops.py.scann_ops  # noqa: F401  (registers the ops)
    except Exception as error:  # ImportError, or a .so built for another TensorFlow
        if required:
            raise
        logger.warning("ScaNN's TensorFlow ops are not available (%s); ScaNN exports will not load", error)
        return False
    return True
