"""The names of the files and folders of a training run and of an export version.

A run (`--output-dir`):

    <run>/metrics.json            the finished run's record (options, data digest, metrics, export)
    <run>/checkpoints/best.weights the kept weights (what refreshes and catalog updates start from)
    <run>/catalog.parquet         the catalog the run trained with
    <run>/validation.npz          the validation requests the publishing gate scores versions on
    <run>/backup/                 a killed run's state (removed once the run is recorded)
    <run>/backup/run.json         the options, data and run id the backup belongs to
    <run>/tensorboard/            TensorBoard logs
    <run>/text_encoder/           the run's frozen item encoder as a SavedModel, for its catalog updates
                                  (training with --export-text-encoder, else the first update;
                                  `tfrec_lm.layers.exported_text_encoder`)

A version (`<export_base>/<model_name>/<version>/`) is a SavedModel plus:

    assets.extra/tfrec_lm.json            its manifest (`tfrec_lm.registry.manifest`)
    assets.extra/tfrec_lm_catalog.parquet the catalog behind it (catalog updates extend it)
    assets.extra/tf_serving_warmup_requests TF Serving's warm-up records
"""

METRICS_FILE = "metrics.json"
CHECKPOINT = "checkpoints/best.weights"
CATALOG_FILE = "catalog.parquet"
VALIDATION_FILE = "validation.npz"
BACKUP_DIR = "backup"
RUN_FILE = "run.json"  # in BACKUP_DIR
STATE_FILE = "callbacks.json"  # in BACKUP_DIR
TENSORBOARD_DIR = "tensorboard"
TEXT_ENCODER_DIR = "text_encoder"

ASSETS_EXTRA = "assets.extra"
MANIFEST_FILE = "tfrec_lm.json"  # in ASSETS_EXTRA
EXPORT_CATALOG_FILE = "tfrec_lm_catalog.parquet"  # in ASSETS_EXTRA
EXPORT_TEXT_VECTORS_FILE = "tfrec_lm_text_vectors.npz"  # in ASSETS_EXTRA: a catalog update's encoded texts
STAGING_PREFIX = ".tmp-"  # a version being written: never a version name (not all digits)
