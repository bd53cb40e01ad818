"""tfrec_lm: two-tower recommenders over pretrained BERT encoders.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` (unless already set) so that
``tf.keras`` is tf-keras 2.x, which TensorFlow Recommenders and HuggingFace's
TensorFlow classes need. This is the package's only import side effect; it must
happen before TensorFlow is first imported.
"""

import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
