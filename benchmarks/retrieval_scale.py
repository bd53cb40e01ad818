"""Retrieval at scale: the export's ScaNN top-k layer against brute force over synthetic
catalogs, through the SavedModel path.

    python benchmarks/retrieval_scale.py                          # 1M, 5M and 10M items, 64 wide
    python benchmarks/retrieval_scale.py --sizes 1000000 --queries 300
    python benchmarks/retrieval_scale.py --quick                  # smoke run: 10k items
    python benchmarks/retrieval_scale.py --wait-quiet 3600        # wait up to an hour for an idle machine

Throughputs mean something only on an idle machine: other jobs slow brute force (two
cores of matrix-vector products) far more than ScaNN (one core, mostly cache misses),
which inflates the ratio. So the script refuses to run (exit status 2) when the 1-minute
load average is above `--max-load` (0.5), and it measures the CPU time other processes
use before, during and after each catalog size (/proc/stat less this process's own
time); a size during which they used more than `--max-load` cores is measured again
after the machine quietens (within `--wait-quiet` seconds) or the run stops with status
2. `--allow-load` measures anyway and marks the result `"loaded": true`. Every size's
record has its `load` (load averages, other processes' CPU cores).

Per catalog size: clustered synthetic item embeddings (`--clusters` Gaussian centres on
the unit sphere, points = centre + N(0, `--spread`²) per dimension, L2-normalised,
generated in chunks) and held-out queries drawn the same way; the exact top-10 by NumPy
in chunks of queries and of items. Each index is built as the export builds it
(`tfrec_lm.export.make_index`, whose ScaNN settings come from `scann_settings`), wrapped
in a module with one serving signature (query embeddings [B, D] -> top-k scores and item
indices), saved as a SavedModel (ScaNN with `namespace_whitelist=["Scann"]`), reloaded
with `tf.saved_model.load` (each size in a child process of its own) and timed through
that signature: brute
force is `tfrs.layers.factorized_top_k.BruteForce` (tf.math.top_k over a matmul with
every item), the export's `--index brute-force`. Single queries are timed in blocks of
`--block` calls per index, the indexes alternating block by block (each index in the
steady state of a process that serves only it), and again interleaved call by call
(each ScaNN call follows a brute-force scan that evicts its data from the caches);
batches of 64 call by call. Also: recall@10 of each against the exact top-10, the index
build seconds, the SavedModel size on disk, process RSS growth of build and load and the
peak RSS of each size. Output: `benchmarks/results/retrieval_scale.json` (`--output`
renames it).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import write_result  # noqa: E402

KINDS = ("scann", "brute-force")
K = 10


# ---------------------------------------------------------------- data and exact answers


def clustered_embeddings(count: int, queries: int, dim: int, clusters: int, spread: float,
                         seed: int = 0, padded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Items [count, dim] and held-out queries [queries, dim], float32, unit rows.

    Both are drawn from the same `clusters` centres (random unit vectors): a random
    centre plus N(0, spread²) noise per dimension, then L2-normalised, 100,000 rows at a
    time into one array.

    Args:
        padded: bool. items get a leading row of zeros ([count + 1, dim], the export's
            padding row 0), written in place: the same items follow it.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int, lead: int = 0) -> np.ndarray:
        out = np.empty((n + lead, dim), np.float32)
        out[:lead] = 0.0
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            points = centres[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, dim)).astype(np.float32)
            out[lead + start:lead + start + m] = points / np.linalg.norm(points, axis=1, keepdims=True)
        return out

    return draw(count, 1 if padded else 0), draw(queries)


def exact_top_k(items: np.ndarray, queries: np.ndarray, k: int = K, chunk: int = 64,
                item_chunk: int = 250_000) -> np.ndarray:
    """Row indices [Q, k] of the k largest dot products, best first (NumPy).

    `chunk` queries against `item_chunk` items at a time (scores of at most
    chunk x item_chunk floats), each chunk's best k merged into the running best.
    """
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        best_scores = np.full((len(block), 0), -np.inf, np.float32)
        best_rows = np.empty((len(block), 0), np.int64)
        for first in range(0, len(items), item_chunk):
            scores = block @ items[first:first + item_chunk].T
            kk = min(k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
            best_rows = np.concatenate([best_rows, top + first], axis=1)
            # Best first; equal scores by row, so the answer does not depend on the chunking.
            order = np.lexsort((best_rows, -best_scores), axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, order, axis=1)
            best_rows = np.take_along_axis(best_rows, order, axis=1)
        out[start:start + chunk] = best_rows
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact top-k that `found` (same row order) contains."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)]))


# ---------------------------------------------------------------- index, SavedModel


def make_module(index, dim: int):
    """A tf.Module whose `serve` signature maps query embeddings to the index's top-k."""
    import tensorflow as tf

    class TopKModule(tf.Module):
        def __init__(self):
            super().__init__(name="retrieval_scale")
            self.index = index

        @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32, name="queries")])
        def serve(self, queries):
            scores, identifiers = self.index(queries)
            # make_index numbers items 1..C (row 0 is the export's padding row).
            return {"scores": scores, "item_indices": tf.cast(identifiers, tf.int64) - 1}

    return TopKModule()


def build_index(kind: str, embeddings: np.ndarray, k: int = K):
    """The export's top-k layer over `embeddings` [C+1, D] (row 0 padding) and its build seconds."""
    from tfrec_lm.index import make_index

    start = time.perf_counter()
    layer = make_index(kind, embeddings, k)
    return layer, time.perf_counter() - start


def save(module, path: Path, kind: str) -> float:
    import tensorflow as tf

    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if kind == "scann" else None)
    start = time.perf_counter()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve}, options=options)
    return time.perf_counter() - start


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # Linux: /proc
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """The process's peak RSS since `reset_peak_rss` (Linux VmHWM), else since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def reset_peak_rss() -> bool:
    """Restarts the peak RSS count (Linux: writing 5 to /proc/self/clear_refs). bool: done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- machine load


def load_average(proc: Path = Path("/proc")) -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, None where /proc/loadavg is unreadable."""
    try:
        return [float(v) for v in (Path(proc) / "loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def cpu_ticks(proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """(busy ticks of all CPUs, this process's ticks) from /proc/stat and /proc/self/stat, or None.

    This process's ticks include those of its children that have ended (each size is
    measured in a child process).
    """
    try:
        fields = (Path(proc) / "stat").read_text().splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        own = (Path(proc) / "self" / "stat").read_text().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime
        return user + nice + system + irq + softirq + steal, sum(int(v) for v in own[11:15])
    except (OSError, ValueError, IndexError):
        return None


class OtherCpu:
    """CPU cores used on average by every other process since `start` (ticks/s from /proc)."""

    def __init__(self, proc: Path = Path("/proc"), clock=time.monotonic):
        self.proc, self.clock = Path(proc), clock
        self.hertz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    def start(self) -> None:
        self.ticks, self.began = cpu_ticks(self.proc), self.clock()

    def cores(self) -> float | None:
        now, ticks = self.clock(), cpu_ticks(self.proc)
        if ticks is None or self.ticks is None or now <= self.began:
            return None
        busy, own = ticks[0] - self.ticks[0], ticks[1] - self.ticks[1]
        return max(0.0, (busy - own) / self.hertz / (now - self.began))


SAMPLE_SECONDS = 1.0


def machine_load(sample_seconds: float | None = None, proc: Path = Path("/proc")) -> dict:
    """Load averages and the cores other processes used over `sample_seconds` (default `SAMPLE_SECONDS`)."""
    sample_seconds = SAMPLE_SECONDS if sample_seconds is None else sample_seconds
    meter = OtherCpu(proc)
    time.sleep(sample_seconds)
    cores = meter.cores()
    return {"load_average": load_average(proc), "other_processes_cpu_cores": cores,
            "sample_seconds": sample_seconds}


def load_problem(load: dict, max_load: float, use_load_average: bool = True) -> str | None:
    """Why `load` (a `machine_load` record) is too busy to measure on, or None when it is quiet.

    The 1-minute load average counts this process's own runnable threads too, so it is
    checked only where this process has been idle (`use_load_average`, before the
    first size); other processes' CPU cores are checked always.
    """
    average = load.get("load_average")
    if use_load_average and average is not None and average[0] > max_load:
        return f"1-minute load average {average[0]:.2f} > {max_load}"
    cores = load.get("other_processes_cpu_cores")
    if cores is not None and cores > max_load:
        return f"other processes used {cores:.2f} CPU cores > {max_load}"
    return None


def wait_for_quiet(max_load: float, deadline: float, use_load_average: bool = True, poll_seconds: float = 15.0,
                   log=print, sample_seconds: float | None = None, proc: Path = Path("/proc")) -> tuple[dict, str | None]:
    """Polls the machine until it is quiet or `deadline` (time.monotonic()) passes.

    Returns:
        tuple. the last `machine_load` record and its `load_problem` (None: quiet).
    """
    while True:
        load = machine_load(sample_seconds, proc)
        problem = load_problem(load, max_load, use_load_average)
        if problem is None or time.monotonic() + poll_seconds > deadline:
            return load, problem
        log(f"[retrieval_scale] waiting for an idle machine: {problem}")
        time.sleep(poll_seconds)


def refuse_message(problem: str) -> str:
    return (f"retrieval_scale: the machine is loaded ({problem}). Other jobs slow brute force more than "
            "ScaNN, so the ratios would be inflated. Run it on an idle machine, wait for one with "
            "--wait-quiet SECONDS, or pass --allow-load to measure anyway (the result is marked \"loaded\": true).\n")


# ---------------------------------------------------------------- timing


def call_rows(count: int, batch: int, rounds: int) -> list[np.ndarray]:
    """Query rows of each of `rounds` calls of `batch` queries, cycling through `count` queries."""
    return [np.arange(i * batch, (i + 1) * batch) % count for i in range(rounds)]


def timed_calls(signatures: dict, queries: np.ndarray, rows: list[np.ndarray], warmup: int, block: int = 1) -> tuple:
    """Queries/s of each signature over calls with the query `rows`.

    The calls are cut into blocks of `block` consecutive calls; each signature makes a
    block's calls in turn, and the order of the signatures alternates from block to
    block (`block=1`: interleaved call by call). Call i of every signature gets the same
    queries.

    Returns:
        tuple. {name: {qps, p50_ms, p99_ms, calls, batch, block}} and each signature's
            answers, {name: item indices [total rows, K]}.
    """
    import tensorflow as tf

    names = list(signatures)
    inputs = [tf.constant(queries[r]) for r in rows]
    rounds, batch = len(rows), len(rows[0])
    for i in range(warmup):
        for name in names:
            signatures[name](queries=inputs[i % rounds])["item_indices"].numpy()
    samples = {name: [] for name in names}
    answers = {name: [] for name in names}
    for b, first in enumerate(range(0, rounds, block)):
        for name in (names if b % 2 == 0 else names[::-1]):
            signature = signatures[name]
            for query in inputs[first:first + block]:
                start = time.perf_counter()
                found = signature(queries=query)["item_indices"].numpy()
                samples[name].append(time.perf_counter() - start)
                answers[name].append(found)
    stats = {}
    for name in names:
        seconds = np.asarray(samples[name])
        stats[name] = {"qps": float(rounds * batch / seconds.sum()),
                       "p50_ms": 1000 * float(np.percentile(seconds, 50)),
                       "p99_ms": 1000 * float(np.percentile(seconds, 99)),
                       "calls": rounds, "batch": batch, "block": block}
    return stats, {name: np.concatenate(answers[name]) for name in names}


# ---------------------------------------------------------------- one catalog size


def run_size(count: int, *, dim: int = 64, queries: int = 300, clusters: int = 4000, spread: float = 0.1,
             batch: int = 64, batch_rounds: int = 8, warmup: int = 20, block: int = 50, seed: int = 0,
             workdir: Path | None = None, log=print) -> dict:
    """Builds, saves, reloads and times both indexes over one synthetic catalog."""
    import tensorflow as tf

    from tfrec_lm.index import scann_settings
    from tfrec_lm.scann_ops import load_scann_ops

    load_scann_ops()
    own_workdir = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="retrieval_scale_"))
    clusters = min(clusters, count)
    gc.collect()
    reset_peak_rss()
    start = time.perf_counter()
    embeddings, held_out = clustered_embeddings(count, queries, dim, clusters, spread, seed, padded=True)
    exact = exact_top_k(embeddings[1:], held_out)
    data_seconds = time.perf_counter() - start
    log(f"[retrieval_scale] {count} items x {dim}: data and exact top-{K} in {data_seconds:.1f} s")
    entry = {"items": count, "dim": dim, "queries": queries, "clusters": clusters, "spread": spread,
             "scann_settings": scann_settings(count, K), "k": K, "data_seconds": data_seconds,
             "data_bytes": int(embeddings.nbytes)}
    try:
        for kind in KINDS:
            gc.collect()
            before = rss_bytes()
            layer, build_seconds = build_index(kind, embeddings, K)
            path = workdir / f"{kind}-{count}"
            save_seconds = save(make_module(layer, dim), path, kind)
            after = rss_bytes()
            del layer
            gc.collect()
            entry[kind] = {"build_seconds": build_seconds, "save_seconds": save_seconds,
                           "saved_model_bytes": directory_bytes(path),
                           "rss_growth_build_and_save_bytes": after - before, "path": str(path)}
            log(f"[retrieval_scale] {kind}: built in {build_seconds:.1f} s, saved in {save_seconds:.1f} s, "
                f"{entry[kind]['saved_model_bytes'] / 2**20:.0f} MiB on disk")
        entry["peak_rss_build_bytes"] = peak_rss_bytes()
        del embeddings  # the exact answers are known; the loaded indexes hold their own copies
        signatures = {}
        loaded = {}
        for kind in KINDS:
            gc.collect()
            before = rss_bytes()
            start = time.perf_counter()
            loaded[kind] = tf.saved_model.load(entry[kind]["path"])
            signatures[kind] = loaded[kind].signatures["serving_default"]
            signatures[kind](queries=tf.constant(held_out[:1]))  # first call: the searcher is built here
            entry[kind]["load_seconds"] = time.perf_counter() - start
            entry[kind]["rss_growth_load_bytes"] = rss_bytes() - before
        single_rows, batch_rows = call_rows(queries, 1, queries), call_rows(queries, batch, batch_rounds)
        single, single_answers = timed_calls(signatures, held_out, single_rows, warmup, block=block)
        interleaved, _ = timed_calls(signatures, held_out, single_rows, 0, block=1)
        batched, batch_answers = timed_calls(signatures, held_out, batch_rows, max(1, warmup // 10), block=1)
        batch_exact = exact[np.concatenate(batch_rows)]
        for kind in KINDS:
            entry[kind]["single_query"] = single[kind]
            entry[kind]["single_query_interleaved"] = interleaved[kind]
            entry[kind]["batch"] = batched[kind]
            entry[kind]["recall_at_10"] = recall_at_k(single_answers[kind], exact)
            entry[kind]["recall_at_10_batched"] = recall_at_k(batch_answers[kind], batch_exact)
        ratio = entry["single_query_qps_ratio_scann_over_brute_force"] = single["scann"]["qps"] / single["brute-force"]["qps"]
        entry["single_query_interleaved_qps_ratio_scann_over_brute_force"] = (
            interleaved["scann"]["qps"] / interleaved["brute-force"]["qps"])
        entry["batch_qps_ratio_scann_over_brute_force"] = batched["scann"]["qps"] / batched["brute-force"]["qps"]
        entry["peak_rss_bytes"] = peak_rss_bytes()
        log(f"[retrieval_scale] {count} items: recall@10 scann {entry['scann']['recall_at_10']:.4f} "
            f"(brute force {entry['brute-force']['recall_at_10']:.4f}); single-query QPS scann "
            f"{single['scann']['qps']:.0f} vs brute force {single['brute-force']['qps']:.0f} ({ratio:.1f}x; "
            f"call by call {interleaved['scann']['qps']:.0f} vs {interleaved['brute-force']['qps']:.0f}, "
            f"{entry['single_query_interleaved_qps_ratio_scann_over_brute_force']:.1f}x); batch-{batch} QPS scann "
            f"{batched['scann']['qps']:.0f} vs {batched['brute-force']['qps']:.0f} "
            f"({entry['batch_qps_ratio_scann_over_brute_force']:.1f}x); peak RSS "
            f"{entry['peak_rss_bytes'] / 2**30:.1f} GiB")
        del signatures, loaded
        gc.collect()
    finally:
        for kind in KINDS:
            entry.get(kind, {}).pop("path", None)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for kind in KINDS:
                shutil.rmtree(workdir / f"{kind}-{count}", ignore_errors=True)
    return entry


TARGETS = {"items": 1_000_000, "recall_at_10": 0.95, "single_query_qps_ratio": 20.0, "build_seconds": 120.0}


def check_targets(entry: dict) -> dict:
    """The issue's targets for a 1M catalog, checked against one measured entry."""
    return {
        "recall_at_10_ge_0.95": entry["scann"]["recall_at_10"] >= TARGETS["recall_at_10"],
        "single_query_qps_ratio_ge_20": entry["single_query_qps_ratio_scann_over_brute_force"]
        >= TARGETS["single_query_qps_ratio"],
        "build_seconds_lt_120": entry["scann"]["build_seconds"] < TARGETS["build_seconds"],
    }


def run_size_in_child(count: int, **settings) -> dict:
    """`run_size` in a fresh Python process: its peak RSS is the size's own, and the memory a
    size leaves behind (TensorFlow keeps a loaded ScaNN searcher for the life of the
    process) does not weigh on the next one. The child's output goes to this one's."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory(prefix="retrieval_scale_entry_") as directory:
        output = Path(directory) / "entry.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child-entry", str(output),
                   "--child-settings", json.dumps({"count": count, **settings})]
        subprocess.run(command, check=True)
        return json.loads(output.read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 10_000_000],
                        help="catalog sizes")
    parser.add_argument("--queries", type=int, default=300, help="held-out queries (single-query timing and recall)")
    parser.add_argument("--dim", type=int, default=None,
                        help="embedding width (default: TrainConfig.embedding_dim, 64)")
    parser.add_argument("--clusters", type=int, default=4000, help="Gaussian cluster centres")
    parser.add_argument("--spread", type=float, default=0.1, help="per-dimension std of points around a centre")
    parser.add_argument("--batch-rounds", type=int, default=8, help="timed batches of 64 per index")
    parser.add_argument("--block", type=int, default=50,
                        help="single queries timed in blocks of this many calls per index (also call by call)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="busiest the machine may be: 1-minute load average before starting, and CPU cores "
                             "other processes use before, during and after each size")
    parser.add_argument("--allow-load", action="store_true",
                        help="measure on a loaded machine anyway; the result is marked \"loaded\": true")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long in all for the machine to quieten (and measure a size "
                             "again that other processes disturbed) before giving up with status 2")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10k items, 100 queries, 2 batches; runs on a loaded machine (marked)")
    parser.add_argument("--output", default="retrieval_scale", help="result name under benchmarks/results/")
    # Internal: one size in a child process (run_size_in_child).
    parser.add_argument("--child-entry", help=argparse.SUPPRESS)
    parser.add_argument("--child-settings", help=argparse.SUPPRESS)
    return parser


def main(argv=None, proc: Path = Path("/proc"), measure=None) -> int:
    """Runs the benchmark; 2 (and nothing written) where the machine is loaded.

    Args:
        argv: list of str or None. command-line arguments.
        proc: Path. where /proc is (tests point it at a fake one).
        measure: callable or None. measures one size (`run_size`'s signature); tests replace it.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child_entry:
        import json

        settings = json.loads(args.child_settings)
        entry = run_size(settings.pop("count"), **settings)
        Path(args.child_entry).write_text(json.dumps(entry, default=float))
        return 0
    if args.quick:
        args.sizes, args.queries, args.batch_rounds, args.warmup, args.block = [10_000], 100, 2, 5, 10
    if min(args.sizes) <= K or args.queries < 1 or args.block < 1:
        parser.error(f"--sizes must exceed {K}, --queries and --block must be positive")
    allow_load = args.allow_load or args.quick
    deadline = time.monotonic() + args.wait_quiet
    # Before TensorFlow is imported: this process has been idle, so the load average is the others'.
    start_load, problem = wait_for_quiet(args.max_load, deadline, use_load_average=True, proc=proc)
    if problem is not None and not allow_load:
        sys.stderr.write(refuse_message(problem))
        return 2
    loaded = problem is not None

    measure = measure or run_size_in_child
    from tfrec_lm.config import TrainConfig

    dim = args.dim or TrainConfig().embedding_dim
    results = []
    measured_once = False
    for count in args.sizes:
        while True:
            if measured_once:  # this process's own work is in the load average: other processes' CPU only
                before, problem = wait_for_quiet(args.max_load, deadline, use_load_average=False, proc=proc)
                if problem is not None and not allow_load:
                    sys.stderr.write(refuse_message(problem))
                    return 2
            else:
                before = start_load
            meter = OtherCpu(proc)
            entry = measure(count, dim=dim, queries=args.queries, clusters=args.clusters, spread=args.spread,
                            batch_rounds=args.batch_rounds, warmup=args.warmup, block=args.block, seed=args.seed)
            measured_once = True
            during = {"other_processes_cpu_cores": meter.cores()}
            after = machine_load(proc=proc)
            problems = [p for p in (problem, load_problem(during, args.max_load, False),
                                    load_problem(after, args.max_load, False)) if p]
            entry["load"] = {"before": before, "during": during, "after": after, "max_load": args.max_load}
            entry["loaded"] = bool(problems)
            if not problems or allow_load:
                break
            print(f"[retrieval_scale] {count} items were measured on a loaded machine ({problems[0]})", flush=True)
            if time.monotonic() >= deadline:
                sys.stderr.write(refuse_message(problems[0]))
                return 2
        loaded = loaded or entry["loaded"]
        results.append(entry)
    payload = {
        "settings": {"sizes": args.sizes, "queries": args.queries, "dim": dim, "k": K, "clusters": args.clusters,
                     "spread": args.spread, "batch": 64, "batch_rounds": args.batch_rounds, "block": args.block,
                     "warmup": args.warmup, "seed": args.seed, "quick": args.quick, "max_load": args.max_load,
                     "allow_load": args.allow_load, "scann": importlib.metadata.version("scann"),
                     "index_construction": "tfrec_lm.export.make_index (ScaNN settings: export.scann_settings)",
                     "brute_force": "tfrs.layers.factorized_top_k.BruteForce: tf.math.top_k over a matmul "
                                    "with every item (the export's --index brute-force)"},
        "loaded": loaded,
        "load_at_start": start_load,
        "results": results,
        "targets": TARGETS,
        "targets_met": {str(e["items"]): check_targets(e) for e in results if e["items"] == TARGETS["items"]},
        "notes": [
            "each index is saved as a SavedModel, reloaded with tf.saved_model.load and called through its "
            "serving signature; each catalog size runs in its own child process, both indexes in it",
            "single_query: blocks of `block` calls per index, the indexes alternating block by block (the "
            "steady state of a process serving one index); single_query_interleaved: alternating call by call, "
            "so every ScaNN call follows a brute-force scan of the whole catalog that evicts ScaNN's data from "
            "the CPU caches; batch: call by call",
            "load: 1-minute load averages and the CPU cores other processes used (from /proc) before, during "
            "and after each size; loaded: other processes used more than max_load cores (or the load average "
            "was above it at the start)",
            "rss growth is measured in the size's process, which builds both indexes and then loads both; freed "
            "memory is not always returned to the OS, so later deltas can read low; peak_rss_bytes is that "
            "process's peak (peak_rss_build_bytes: up to the end of building and saving)",
        ],
    }
    path = write_result(args.output, payload)
    print(f"[retrieval_scale] wrote {path}" + (" (measured on a loaded machine)" if loaded else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
