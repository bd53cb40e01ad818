"""tfrec_lm: two-tower recommenders over pretrained BERT encoders.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` (unless already set) so that
``tf.keras`` is tf-keras 2.x, which TensorFlow Recommenders and HuggingFace's
TensorFlow classes need. This is the package's only import side effect; it must
happen before TensorFlow is first imported.

``from tfrec_lm import Recommender`` (``tfrec_lm.recommender``) queries an export
in-process; it is imported on first use, so ``import tfrec_lm`` imports no TensorFlow.
"""

import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
__all__ = ["Recommender", "__version__"]


def __getattr__(name):
    if name == "Recommender":
        from tfrec_lm.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'tfrec_lm' has no attribute {name!r}")
