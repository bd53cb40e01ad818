"""Catalog updates without retraining: new, changed and retired items of a trained run.

- `tfrec_lm.catalog.table`: the catalog a run was trained with (and each update's), kept
  beside its checkpoint and in every export it produces.
- `tfrec_lm.catalog.update`: `update_catalog`, which turns a trained run and an items file
  into the next export version; nothing is trained.
- `python -m tfrec_lm.catalog`: the command line.
"""
