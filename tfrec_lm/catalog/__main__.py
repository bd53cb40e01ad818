"""`python -m tfrec_lm.catalog`: add, change or retire items of a trained run, without training.

    python -m tfrec_lm.catalog --items new_items.csv
    python -m tfrec_lm.catalog --retire old-1 old-2 --retire-file gone.txt
    python -m tfrec_lm.catalog --run runs/tfrec_lm --from-version 3 --items new_items.csv
    python -m tfrec_lm.catalog --items new_items.csv --interactions log.csv --since 1998-03-01

Extends the newest version of `exports/tfrec_lm` (or `--export-base/--model-name`) with the
weights of the run that version serves, and hands the result to the publishing gate:
published as the next version (which `python -m tfrec_lm.serve` and TF Serving pick up) or
held in the staging base.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from tfrec_lm.catalog.fold_in import DEFAULT_SHRINKAGE
from tfrec_lm.catalog.popularity import DEFAULT_HALF_LIFE_DAYS
from tfrec_lm.catalog.update import CATALOG_TOLERANCE
from tfrec_lm.console import exit_at_once, quiet_native_warnings, quiet_third_party_logs
from tfrec_lm.errors import AssetError, ConfigError, DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfrec_lm.catalog",
        description="Add new items by their text, re-encode changed texts and retire items of a trained run; "
                    "writes the next SavedModel version. No training step runs.")
    parser.add_argument("--run", help="the training run whose weights serve the items (its --output-dir); "
                                      "default: the run of the version extended. An update of another run than "
                                      "the newest version's is refused unless --from-version names its version")
    parser.add_argument("--from-version", type=int, metavar="N",
                        help="the version to extend (its catalog is the starting point; default: the newest)")
    parser.add_argument("--items", help="new or changed items: the --items file format of --data files "
                                        "(item_id and text, or title [+ year] [+ genres]); CSV/TSV/Parquet/JSONL")
    parser.add_argument("--retire", nargs="+", default=[], metavar="ITEM_ID", help="item ids to retire")
    parser.add_argument("--retire-file", help="a text file of item ids to retire, one per line")
    parser.add_argument("--export-base", help="where versions go (default: the run's --export-base, or exports)")
    parser.add_argument("--model-name", help="default: the run's --model-name, or tfrec_lm")
    parser.add_argument("--publish", choices=("if-better", "always", "never"), default="if-better",
                        help="if-better (default): publish when validation NDCG@10 through serving_default is "
                             "within --tolerance of the served version's; always; never (staging base only)")
    parser.add_argument("--tolerance", type=float, default=CATALOG_TOLERANCE,
                        help="relative NDCG@10 loss if-better accepts (default %(default)s: new items can only "
                             "displace the validation targets, which are all known items)")
    parser.add_argument("--staging-base", help="where a version that is not published goes "
                                               "(default: <export-base>-staging)")
    parser.add_argument("--index", choices=("scann", "brute-force"), help="default: the run's --index")
    parser.add_argument("--top-k", type=int, help="K of serving_default (default: the run's --top-k)")
    parser.add_argument("--cold-neighbours", type=int,
                        help="cold items take the ID part of this many text neighbours (0: the learned no-ID "
                             "vector; default: the run's --cold-neighbours)")
    parser.add_argument("--cold-popularity", type=float,
                        help="power of each neighbour's training count in that mix (default: the run's)")
    parser.add_argument("--interactions", metavar="LOG",
                        help="an interaction log (the --data files interactions format: user_id, item_id, "
                             "timestamp): each logged item's vector is folded in from the frozen user tower's "
                             "queries of the users who took it, shrunk toward its text-based vector; no training. "
                             "Rows for items outside the catalog are counted and reported")
    parser.add_argument("--since", metavar="T",
                        help="with --interactions: fold in only rows at or after T (Unix seconds or an ISO date); "
                             "earlier rows still make the users' histories")
    parser.add_argument("--fold-in-shrinkage", type=float, metavar="K",
                        help=f"an item with n log interactions moves n / (n + K) of the way to its audience "
                             f"(default {DEFAULT_SHRINKAGE:g})")
    parser.add_argument("--no-fold-in-text-prior", dest="fold_in_text_prior", action="store_false",
                        help="shrink toward the model's no-ID vector instead of the item's text-based vector "
                             "(measures what the text adds)")
    parser.add_argument("--fold-in-half-life", type=float, metavar="DAYS",
                        help="weigh each logged interaction by 0.5 ** (age / DAYS) (default: equal weights)")
    parser.add_argument("--fold-in-map", choices=("linear", "none"), default="linear",
                        help="linear (default): map the takers' query centroid into the item space with a ridge "
                             "map fitted on the log's known items; none: the centroid as it is (it puts folded "
                             "items into most lists)")
    parser.add_argument("--fold-in-scope", choices=("new", "all"), default="new",
                        help="new (default): items without a trained ID embedding; all: known items too")
    parser.add_argument("--popularity-offset", default="auto", metavar="BETA",
                        help="with --interactions: add BETA * log(1 + recent interactions) to every item's score; "
                             "auto (default): BETA chosen on the log's newest week (0 when it does not help); off")
    parser.add_argument("--new-item-offset", default="auto", metavar="GAMMA",
                        help="with --interactions: add GAMMA to the score of every item without a trained ID "
                             "embedding; auto (default): chosen after BETA on the same log rows (0 when it does "
                             "not help); off")
    parser.add_argument("--popularity-half-life", type=float, metavar="DAYS",
                        help=f"half-life of the offset's recency weighting (default {DEFAULT_HALF_LIFE_DAYS:g})")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser


def read_retire_file(path: str) -> list[str]:
    """Item ids to retire, one per line (blank lines and `#` comments skipped).

    Args:
        path: str. the file.

    Returns:
        list of str.

    Raises:
        DataError: the file cannot be read.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read --retire-file {path}: {error}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_third_party_logs()  # before TensorFlow is imported
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        retire = list(args.retire) + (read_retire_file(args.retire_file) if args.retire_file else [])
        from tfrec_lm.catalog.update import update_catalog

        if not args.verbose:
            quiet_native_warnings()  # ScaNN's partitioner and grappler write through absl's C++ log

        update = update_catalog(args.run, items_path=args.items, retire=retire, export_base=args.export_base,
                                model_name=args.model_name, index=args.index, top_k=args.top_k,
                                cold_neighbours=args.cold_neighbours, cold_popularity=args.cold_popularity,
                                from_version=args.from_version, publish=args.publish,
                                staging_base=args.staging_base, tolerance=args.tolerance,
                                interactions=args.interactions, since=args.since,
                                fold_in_shrinkage=args.fold_in_shrinkage, fold_in_text_prior=args.fold_in_text_prior,
                                fold_in_half_life_days=args.fold_in_half_life, fold_in_scope=args.fold_in_scope,
                                fold_in_map=args.fold_in_map, popularity=args.popularity_offset,
                                popularity_half_life_days=args.popularity_half_life,
                                new_item_offset=args.new_item_offset,
                                command=shlex.join(["python", "-m", "tfrec_lm.catalog", *argv]))
    except (ConfigError, DataError, AssetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = update.changes.summary()
    print(f"catalog update from {update.base}: {summary['added']} added, {summary['changed']} changed, "
          f"{summary['retired']} retired, {summary['restored']} restored, {summary['unchanged']} unchanged; "
          f"{update.encoded} texts encoded{f' ({update.reused} more carried over)' if update.reused else ''}; "
          f"{update.num_servable} of {update.num_items} items can be "
          f"recommended; {update.seconds:.1f} s")
    if update.fold_in is not None:
        fold = update.fold_in
        print(f"fold-in: {fold.used_rows} of {fold.log_rows} log rows folded into {len(fold.rows)} items "
              f"(shrinkage {fold.shrinkage:g}, {'text' if fold.text_prior else 'no-ID'} prior, audience map "
              f"{fold.audience_map}{f' on {fold.map_items} known items' if fold.map_items else ''}); "
              f"{fold.outside_catalog} rows on {fold.outside_catalog_items} items outside the catalog, "
              f"{fold.out_of_scope} on items out of scope ({fold.scope}), {fold.no_history} without a history")
    if update.popularity is not None:
        offset = update.popularity
        print(f"popularity offset: {offset.scale:g} x log(1 + interactions, half-life {offset.half_life_days:g} "
              f"days) ({offset.chosen}), {offset.new_item_offset:+g} on items without a trained ID "
              f"({offset.new_item_chosen})" + (f"; chosen on {offset.calibration['targets']} log interactions"
                                               if offset.calibration else ""))
    if update.gate is not None:
        print(update.gate.summary())
    print("time: " + ", ".join(f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in update.stages.items())
          + f" (of {update.seconds:.1f} s)")
    print(f"export:  {update.export_path}" + ("" if update.gate is None or update.gate.published
                                              else "  (staging: not served)"))
    return 0


if __name__ == "__main__":
    exit_at_once(main())  # the teardown of the update's TensorFlow objects is the OS's job (`console.exit_at_once`)
