"""Runs every benchmark in benchmarks/ as a subprocess and prints a summary table.

    python benchmarks/run_all.py                         # everything (an hour and more on 2 CPU cores)
    python benchmarks/run_all.py --only retrieval_scale  # some of them, by name
    python benchmarks/run_all.py --quick                 # smoke run: small settings
    python benchmarks/run_all.py --list                  # the benchmarks it finds

A benchmark is any `benchmarks/<name>.py` whose name does not start with `_` (this file
aside). Each runs standalone as `python benchmarks/<name>.py <arguments>` from the
repository root (with the root on PYTHONPATH), with the arguments of `BENCHMARKS` below
(none for a script not listed there), and writes `benchmarks/results/<result>.json`.
`--quick` runs each with its smoke arguments and writes to `benchmarks/results/quick/`
instead (so the committed results stay), skipping a benchmark that has no small setting.
The exit status is non-zero if any benchmark failed (non-zero exit, timeout, or a
result file it should have written is missing or was not rewritten).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RESULTS_ENV = "TFREC_LM_BENCH_RESULTS"  # read by _common.write_result

# name: arguments of the full run and of the smoke run (None: no smoke setting, skipped
# by --quick), and the result names it writes under the results directory.
BENCHMARKS = {
    "ml100k": {"args": [], "quick": None, "results": ["ml100k_default"]},
    "lora_cost": {"args": [], "quick": ["--steps", "2", "--rounds", "1", "--refreshes", "1"],
                  "results": ["lora_cost"]},
    # Refuses a loaded machine (exit status 2): waits up to 10 minutes for the previous benchmark's load to pass.
    "retrieval_scale": {"args": ["--wait-quiet", "600"], "quick": ["--quick"], "results": ["retrieval_scale"]},
    # Without --export-base this trains and exports a tiny model (its smoke mode); the
    # committed serving_latency.json came from the real exports, so the suite writes beside it.
    "serving_latency": {"args": ["--output", "serving_latency_smoke"],
                        "quick": ["--output", "serving_latency_smoke", "--requests", "20", "--warmup", "5",
                                  "--concurrency", "0"],
                        "results": ["serving_latency_smoke"]},
    "recency_ablation": {"args": [], "quick": None, "results": ["recency_ablation"]},
    "refresh": {"args": [], "quick": ["--set", "epochs=1", "max_train_examples=2000", "max_history=10",
                                      "--refresh", "lr1e-3", "lr3e-4-replay1"],
                "results": ["refresh"]},
    "streaming_scale": {"args": [], "quick": ["--smoke", "--output", "streaming_scale"],
                        "results": ["streaming_scale"]},
    "streaming": {"args": ["--seeds", "42", "1", "2", "--extra", "fold_in_cold0",
                                "fold_in_no_new_item_offset"], "quick": None,
                  "results": ["streaming"]},
    "training_throughput": {"args": [], "quick": ["--quick"], "results": ["training_throughput"]},
    "tuning_ml100k": {"args": [], "quick": None, "results": ["tuning_ml100k"]},
    "update_cost": {"args": [], "quick": None, "results": ["update_cost"]},
    "user_towers": {"args": [], "quick": ["--steps", "2", "--repeats", "3"], "results": ["user_towers"]},
}


def discover(directory: Path = HERE) -> list[str]:
    """Names of the benchmark scripts in `directory`, sorted."""
    this = Path(__file__).name
    return sorted(p.stem for p in directory.glob("*.py") if not p.name.startswith("_") and p.name != this)


def plan(name: str, quick: bool) -> tuple[list[str] | None, list[str]]:
    """(arguments or None when skipped, result names) of one benchmark."""
    spec = BENCHMARKS.get(name, {"args": [], "quick": None, "results": [name]})
    return (spec["quick"] if quick else spec["args"]), spec["results"]


def select(available: list[str], only: list[str] | None) -> list[str]:
    """The benchmarks to run, in discovery order; ValueError for an unknown name."""
    if not only:
        return list(available)
    unknown = sorted(set(only) - set(available))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available)}")
    return [name for name in available if name in set(only)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="small settings, results under results/quick/")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--results-dir", default=None,
                        help="where results go (default benchmarks/results, or benchmarks/results/quick with --quick)")
    parser.add_argument("--timeout-minutes", type=float, default=180, help="per benchmark (default 180)")
    return parser


def run_one(name: str, args: list[str], results: list[str], results_dir: Path, timeout_s: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env[RESULTS_ENV] = str(results_dir)
    paths = [results_dir / f"{result}.json" for result in results]
    command = [sys.executable, str(HERE / f"{name}.py"), *args]
    print(f"[run_all] {name}: {' '.join(command[1:])}", flush=True)
    start_wall = time.time()
    start = time.monotonic()
    try:
        code = subprocess.run(command, cwd=str(ROOT), env=env, timeout=timeout_s).returncode
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        status = f"failed (timeout {timeout_s:.0f} s)"
    seconds = time.monotonic() - start
    if status == "ok":
        stale = [p for p in paths if not p.exists() or p.stat().st_mtime < start_wall - 1]
        if stale:
            status = "failed (no result: " + ", ".join(p.name for p in stale) + ")"
    return {"name": name, "status": status, "seconds": seconds, "results": [str(p) for p in paths]}


def summary_table(rows: list[dict]) -> str:
    def relative(path: str) -> str:
        try:
            return str(Path(path).relative_to(ROOT))
        except ValueError:
            return path

    lines = [("benchmark", "status", "seconds", "result"), *(
        (r["name"], r["status"], f"{r['seconds']:.0f}" if r["seconds"] is not None else "-",
         ", ".join(relative(p) for p in r["results"]) or "-") for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    available = discover()
    if args.list:
        for name in available:
            full, results = plan(name, False)
            quick, _ = plan(name, True)
            print(f"{name}: args {' '.join(full) or '-'}; quick "
                  f"{'skipped' if quick is None else ' '.join(quick) or '-'}; results {', '.join(results)}")
        return 0
    try:
        names = select(available, args.only)
    except ValueError as error:
        parser.error(str(error))
    results_dir = Path(args.results_dir) if args.results_dir else (RESULTS / "quick" if args.quick else RESULTS)
    rows = []
    for name in names:
        arguments, results = plan(name, args.quick)
        if arguments is None:
            rows.append({"name": name, "status": "skipped (no quick setting)", "seconds": None, "results": []})
            continue
        rows.append(run_one(name, arguments, results, results_dir.resolve(), 60 * args.timeout_minutes))
    print("\n" + summary_table(rows), flush=True)
    failed = [r["name"] for r in rows if r["status"].startswith("failed")]
    if failed:
        print(f"[run_all] failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
