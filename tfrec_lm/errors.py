"""The errors a user's input can cause, one class per kind, in one place.

The command-line tools turn each of them into one line on stderr and exit code 2; the
library raises them and never prints. Serving has its own error type for request
failures (`tfrec_lm.serve.errors.ServingError`).
"""


class ConfigError(ValueError):
    """A configuration value, a config file or the cluster description (TF_CONFIG) is invalid."""


class DataError(ValueError):
    """Input data that cannot be used: a missing or malformed file, bad rows in strict mode, or no
    usable row or training example."""


class AssetError(RuntimeError):
    """An asset could not be found, downloaded, verified or unpacked."""
