"""Item titles for the client's answers: from the catalog an export carries, or any items file.

The SavedModel's signatures answer item ids only, and a server has no endpoint for the
catalog; what a version folder carries beside the SavedModel is its catalog,
`assets.extra/tfrec_lm_catalog.parquet` (written when the trainer or a catalog update
exports; names in `tfrec_lm.registry.layout`). `read_titles` takes that, or a run's
`catalog.parquet`, or an items file of SPEC §1 (`item_id` and `title`, or `text`, in CSV,
TSV, Parquet or JSON Lines).
"""

from __future__ import annotations

from pathlib import Path

from tfrec_lm.errors import DataError
from tfrec_lm.registry.layout import ASSETS_EXTRA, CATALOG_FILE, EXPORT_CATALOG_FILE
from tfrec_lm.registry.model_versions import ModelVersions


def catalog_file(path, version: int | None = None) -> Path:
    """The file holding the titles that `path` names.

    Args:
        path: str | Path. a catalog or items file; a version folder (its
            `assets.extra/tfrec_lm_catalog.parquet`); a model folder of integer version
            folders (`version`'s, else the newest's, which TF Serving's default policy
            serves); or a training run folder (its `catalog.parquet`).
        version: int or None. the version to take from a model folder.

    Returns:
        Path. the file.

    Raises:
        DataError: nothing there, or a folder without a catalog.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"--catalog {path}: no such file or folder")
    if (path / ASSETS_EXTRA).is_dir() or (path / "saved_model.pb").is_file():
        found = path / ASSETS_EXTRA / EXPORT_CATALOG_FILE
        if not found.is_file():
            raise DataError(f"--catalog {path}: this export version carries no {ASSETS_EXTRA}/{EXPORT_CATALOG_FILE} "
                            f"(exported without a catalog); give the run's {CATALOG_FILE} or an items file instead")
        return found
    if (path / CATALOG_FILE).is_file():
        return path / CATALOG_FILE
    versions = ModelVersions.of(path).versions()
    if versions:
        chosen = version if version is not None else versions[-1]
        if chosen not in versions:
            raise DataError(f"--catalog {path}: no version {chosen} (versions: {versions})")
        return catalog_file(path / str(chosen))
    raise DataError(f"--catalog {path}: not a catalog file, an export version or model folder, or a run folder")


def read_titles(path, version: int | None = None) -> dict:
    """{item id: title} from a catalog, an items file or an export folder (`catalog_file`).

    Args:
        path: str | Path. see `catalog_file`.
        version: int or None. see `catalog_file`.

    Returns:
        dict of str -> str. the `title` column (else `text`) by `item_id`; empty titles left out.

    Raises:
        DataError: no such file, an unreadable one, or one without `item_id` and `title` / `text`.
    """
    from tfrec_lm.data.files import read_table

    source = catalog_file(path, version)
    table = read_table(source, multiline=("title", "text"))
    frame = table.frame
    column = "title" if "title" in frame.columns else "text" if "text" in frame.columns else None
    if "item_id" not in frame.columns or column is None:
        raise DataError(f"--catalog {source}: needs an item_id and a title (or text) column, found "
                        f"{', '.join(map(str, frame.columns)) or 'none'}")
    titles = {}
    for item, title in zip(frame["item_id"], frame[column]):
        if item is None or title is None or (isinstance(title, float) and title != title):
            continue
        text = " ".join(str(title).split())
        if text:
            titles[str(item).strip()] = text
    return titles
