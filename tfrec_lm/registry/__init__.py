"""Run folders and export versions: the one place that knows where a run and a version keep what.

- `tfrec_lm.registry.layout`: the file and folder names of a run and of a version.
- `tfrec_lm.registry.runs`: `RunFolder`, one training run's `--output-dir`, and the rule
  that a finished run is never overwritten silently (`claim`).
- `tfrec_lm.registry.manifest`: the manifest every version carries in `assets.extra/`.
- `tfrec_lm.registry.model_versions`: `ModelVersions`, the versions under `<export_base>/<model_name>`
  (atomic writes, publishing a staged version, rollback copies).
- `tfrec_lm.registry.validation`: `ValidationRequests`, the validation users a run recorded,
  on which the publishing gate scores a candidate and the served version alike.
- `tfrec_lm.registry.gate`: `PublishGate`, which publishes a candidate only when it is
  allowed to (`--publish if-better | always | never`).
- `tfrec_lm.registry.labels`: the `version_labels` of a TF Serving `models.config`.
"""
