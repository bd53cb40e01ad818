"""`python -m tfrec_lm.versions`: list, inspect, promote and roll back export versions.

    python -m tfrec_lm.versions list
    python -m tfrec_lm.versions show 3
    python -m tfrec_lm.versions diff 2 3
    python -m tfrec_lm.versions promote 3       # the `stable` label -> 3 in serving/models.config
    python -m tfrec_lm.versions rollback 2      # version 2's SavedModel, byte for byte, as the next version

Every version carries a manifest (`assets.extra/tfrec_lm.json`: its run, parent version,
command, options hash, data fingerprint, validation metrics, the gate's decision, creation
time). TF Serving and `python -m tfrec_lm.serve` serve the newest version to a request that
names none, and a labelled one at `/v1/models/<name>/labels/<label>` (gRPC: `version_label`).

- `promote N` points `stable` at N, keeps the newest version loaded as `canary` when it is
  another one, and writes both into the models.config as TF Serving's `version_labels`
  with a `specific` version policy (TF Serving refuses a label on a version it has not loaded).
- `rollback [N]` (default: the parent of the newest version) copies version N's files as the
  next version, so the default route serves N's answers exactly without anything being
  deleted; where the models.config labels this model, `stable` points at the copy.

With labels, TF Serving loads exactly the labelled versions, so a version published later
is served once it is promoted; without labels (the shipped models.config), the newest is.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tfrec_lm.errors import ConfigError
from tfrec_lm.registry.labels import read_labels, write_labels
from tfrec_lm.registry.manifest import manifest_line
from tfrec_lm.registry.model_versions import ModelVersions

DEFAULT_MODELS_CONFIG = "serving/models.config"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrec_lm.versions",
                                     description="List, inspect, promote and roll back the export versions of a model.")
    parser.add_argument("--export-base", default="exports", help="the export base (default: %(default)s)")
    parser.add_argument("--model-name", default="tfrec_lm", help="the model's folder under it (default: %(default)s)")
    parser.add_argument("--models-config", default=DEFAULT_MODELS_CONFIG,
                        help="the TF Serving models.config whose version_labels promote and rollback write "
                             "(default: %(default)s)")
    parser.add_argument("--base-path", help="the model's base_path as the server sees it, used only when the "
                                            "models.config lacks the model (default: the model folder)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="one line per version: kind, creation, parent, validation, gate, run")
    show = commands.add_parser("show", help="a version's whole manifest (JSON)")
    show.add_argument("version", type=int)
    diff = commands.add_parser("diff", help="what differs between two versions' manifests and options")
    diff.add_argument("old", type=int)
    diff.add_argument("new", type=int)
    promote = commands.add_parser("promote", help="point the `stable` label at a version")
    promote.add_argument("version", type=int)
    rollback = commands.add_parser("rollback", help="serve an earlier version again, as the next version")
    rollback.add_argument("version", type=int, nargs="?",
                          help="the version to go back to (default: the parent of the newest version)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser


def _known(versions: ModelVersions, version: int) -> int:
    if version not in versions.versions():
        raise ConfigError(f"no version {version} in {versions.model_dir} (it has "
                          f"{', '.join(map(str, versions.versions())) or 'none'})")
    return int(version)


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, inner in value.items():
            flat.update(_flat(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def manifest_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """The keys whose values differ between two manifests, nested keys dotted.

    Args:
        old: dict. a manifest.
        new: dict. another.

    Returns:
        list of (key, old value, new value), sorted by key; `version` and `created` left out.
    """
    old, new = _flat(old), _flat(new)
    skip = {"version", "created"}
    return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if key not in skip and old.get(key) != new.get(key)]


def promote(versions: ModelVersions, version: int, models_config: str, base_path=None) -> dict:
    """Points `stable` at `version` (and `canary` at the newest version when it is another one).

    Args:
        versions: ModelVersions. the model.
        version: int. the version to promote.
        models_config: str. the models.config to write.
        base_path: str or None. the model's base_path, for a models.config that lacks the model.

    Returns:
        dict. the labels written.
    """
    version = _known(versions, version)
    labels = {"stable": version}
    newest = versions.newest()
    if newest != version:
        labels["canary"] = newest
    write_labels(models_config, versions.model_name, labels, labels.values(),
                 base_path=base_path or str(versions.model_dir.resolve()))
    return labels


def rollback(versions: ModelVersions, version=None, models_config=None, base_path=None) -> tuple[int, dict]:
    """Copies `version`'s SavedModel as the next version and labels the copy `stable`.

    Args:
        versions: ModelVersions. the model.
        version: int or None. the version to go back to (default: the parent of the newest).
        models_config: str or None. the models.config to move `stable` in, where it labels the model.
        base_path: str or None. as for `promote`.

    Returns:
        tuple (int, dict). the new version and the labels written (`{}` without a models.config).
    """
    newest = versions.newest()
    if newest is None:
        raise ConfigError(f"nothing to roll back: {versions.model_dir} has no version")
    if version is None:
        version = versions.manifest(newest).get("parent_version")
        if version is None:
            raise ConfigError(f"version {newest} names no parent version: pass the version to roll back to")
    version = _known(versions, version)
    if version == newest:
        raise ConfigError(f"version {version} is already the newest version of {versions.model_dir}")
    copy = versions.publish(versions.path(version), {"kind": "rollback", "parent_version": newest,
                                                     "rollback_of": version}, move=False)
    new_version = int(copy.name)
    labels = {}
    if models_config is not None and read_labels(models_config, versions.model_name):
        labels = {"stable": new_version}
        write_labels(models_config, versions.model_name, labels, labels.values(),
                     base_path=base_path or str(versions.model_dir.resolve()))
    return new_version, labels


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    versions = ModelVersions(args.export_base, args.model_name)
    try:
        if args.command == "list":
            if not versions.versions():
                raise ConfigError(f"no versions in {versions.model_dir}")
            labels = read_labels(args.models_config, versions.model_name)
            by_version = {}
            for label, version in labels.items():
                by_version.setdefault(version, []).append(label)
            newest = versions.newest()
            for version in versions.versions():
                marks = sorted(by_version.get(version, [])) + (["newest"] if version == newest else [])
                print(manifest_line(version, versions.manifest(version))
                      + (f"  [{', '.join(marks)}]" if marks else ""))
        elif args.command == "show":
            print(json.dumps(versions.manifest(_known(versions, args.version)), indent=2, default=str))
        elif args.command == "diff":
            old = versions.manifest(_known(versions, args.old))
            new = versions.manifest(_known(versions, args.new))
            differences = manifest_differences(old, new)
            for key, before, after in differences:
                print(f"{key}: {json.dumps(before, default=str)} -> {json.dumps(after, default=str)}")
            if not differences:
                print(f"versions {args.old} and {args.new} have the same manifest")
        elif args.command == "promote":
            labels = promote(versions, args.version, args.models_config, args.base_path)
            print(f"{args.models_config}: " + ", ".join(f"{k} -> {v}" for k, v in labels.items())
                  + " (TF Serving reloads it with --model_config_file_poll_wait_seconds; restart "
                    "python -m tfrec_lm.serve)")
        elif args.command == "rollback":
            new_version, labels = rollback(versions, args.version, args.models_config, args.base_path)
            source = versions.manifest(new_version).get("rollback_of")
            print(f"version {new_version} is version {source}'s SavedModel, byte for byte; it is now the newest "
                  f"version of {versions.model_dir}" + (f", labelled stable in {args.models_config}" if labels else ""))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
