"""Serving latency: single-user requests over REST and gRPC against the local server, and
the SavedModel called in-process, for ScaNN and brute-force exports.

    python benchmarks/serving_latency.py                       # smoke: trains a tiny model first
    python benchmarks/serving_latency.py --export-base exports --export-base exports_bf

Each `--export-base` holds `<model-name>/<version>/` (the newest version is used; its
index, `scann` or `brute-force`, is read from `assets.extra/tfrec_lm.json`). Without one,
a tiny model is trained on synthetic data and exported both ways (a smoke run: the
numbers then say little about a real catalog). The server is `python -m tfrec_lm.serve`
in a subprocess on 127.0.0.1 (free ports); the clients run in this process. Per export
and path: p50 / p99 / mean latency of `--requests` sequential single-user requests (after
`--warmup`), their throughput, and the throughput of `--concurrency` client threads
sharing `--requests` more. Loops are bounded; nothing leaves loopback.
Output: `benchmarks/results/serving_latency.json`.

The local server is a development stand-in written in Python; TF Serving's own numbers
(C++, server-side batching) need the real binary (serving/README.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import write_result  # noqa: E402


def stats(samples_s: list[float]) -> dict:
    ms = 1000.0 * np.asarray(samples_s)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "requests": int(len(ms)), "throughput_rps": float(len(ms) / (ms.sum() / 1000.0))}


def timed(call, requests: list, warmup: int, count: int) -> dict:
    for i in range(warmup):
        call(requests[i % len(requests)])
    samples = []
    for i in range(count):
        start = time.perf_counter()
        call(requests[i % len(requests)])
        samples.append(time.perf_counter() - start)
    return stats(samples)


def concurrent_throughput(make_call, requests: list, count: int, concurrency: int) -> dict:
    """`count` requests shared by `concurrency` threads (each with its own connection)."""
    per_thread = max(1, count // concurrency)

    def worker(offset):
        call = make_call()
        for i in range(per_thread):
            call(requests[(offset + i) % len(requests)])

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": per_thread * concurrency,
            "throughput_rps": per_thread * concurrency / elapsed}


# ---------------------------------------------------------------- exports and requests


def find_exports(bases: list[str], model_name: str) -> dict:
    """{label: model base path}; label is the export's index kind (plus a suffix if repeated)."""
    found = {}
    for base in bases:
        model_dir = Path(base) / model_name
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
            if model_dir.is_dir() else []
        if not versions:
            raise SystemExit(f"no <version> directory under {model_dir}")
        info = model_dir / str(versions[-1]) / "assets.extra" / "tfrec_lm.json"
        kind = json.loads(info.read_text()).get("index", "unknown") if info.exists() else "unknown"
        label, n = kind, 2
        while label in found:
            label, n = f"{kind}-{n}", n + 1
        found[label] = model_dir
    return found


def sample_histories(loaded, length: int, count: int, seed: int = 0) -> list[list[str]]:
    """Histories of known item ids, found through `serving_default` alone (any export)."""
    import tensorflow as tf

    fn = loaded.signatures["serving_default"]
    pool: list[str] = []
    frontier = [[""]]
    for _ in range(20):
        out = fn(history_item_ids=tf.constant(frontier),
                 history_timestamps=tf.zeros([len(frontier), len(frontier[0])], tf.int64))
        new = [v.decode() for v in np.unique(out["item_ids"].numpy())]
        pool = sorted(set(pool) | set(new))
        if len(pool) >= 4 * length:
            break
        frontier = [[item] for item in new]
    rng = np.random.default_rng(seed)
    take = min(length, len(pool))
    return [list(rng.choice(pool, size=take, replace=False)) for _ in range(count)]


def as_inputs(history: list[str]) -> dict:
    ids = [""] + history  # the client's batching-safe leading padding column
    return {"history_item_ids": np.array([ids], dtype=object), "history_timestamps": np.zeros([1, len(ids)], np.int64)}


# ---------------------------------------------------------------- the server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: dict, workdir: Path):
    config = "model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
        for name, path in models.items()) + "}\n"
    (workdir / "models.config").write_text(config)
    grpc_port, rest_port = free_port(), free_port()
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tfrec_lm.serve", f"--model_config_file={workdir / 'models.config'}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--file_system_poll_wait_seconds=0",
         "--log_level=WARNING"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=str(Path(__file__).resolve().parents[1]))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("tfrec_lm.serve ready"):
            return process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"
        if not line and process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"the server did not start; see {workdir / 'server.log'}")


def stop_server(process) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


# ---------------------------------------------------------------- main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-base", action="append", default=[],
                        help="directory holding <model-name>/<version>/ (repeat for several exports); "
                             "default: train and export a tiny model (smoke run)")
    parser.add_argument("--model-name", default="tfrec_lm")
    parser.add_argument("--requests", type=int, default=200, help="sequential timed requests per path (default 200)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4, help="client threads of the throughput run (0: skip)")
    parser.add_argument("--history-length", type=int, default=20, help="items in each user's history (default 20)")
    parser.add_argument("--output", default="serving_latency", help="result name under benchmarks/results/")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000:
        parser.error("--requests must be in [1, 100000]")

    import tensorflow as tf

    from tfrec_lm.client import GrpcClient, RestClient
    from tfrec_lm.scann_ops import load_scann_ops

    load_scann_ops(required=False)
    workdir = Path(tempfile.mkdtemp(prefix="serving_latency_"))
    if args.export_base:
        mode = "exports"
        exports = find_exports(args.export_base, args.model_name)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_export import tiny_exports  # a test fixture (tests/tiny_export.py), not part of the package

        mode = "smoke"
        tiny = tiny_exports(workdir / "tiny")
        exports = {"brute-force": tiny.brute_force_base, "scann": tiny.scann_base}
    print(f"[serving_latency] {mode}: {', '.join(f'{k}={v}' for k, v in exports.items())}", flush=True)

    names = {label: f"m_{label.replace('-', '_')}" for label in exports}
    process, grpc_target, rest_url = start_server({names[k]: str(v) for k, v in exports.items()}, workdir)
    results = {}
    try:
        for label, base in exports.items():
            version = max(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())
            loaded = tf.saved_model.load(str(base / str(version)))
            histories = sample_histories(loaded, args.history_length, count=16)
            requests = [as_inputs(h) for h in histories]
            fn = loaded.signatures["serving_default"]
            tensors = [{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in r.items()}
                       for r in requests]

            def in_process(t, fn=fn):
                fn(**t)["scores"].numpy()

            rest = RestClient(rest_url, model_name=names[label], timeout=30, retries=0)
            grpc_client = GrpcClient(grpc_target, model_name=names[label], timeout=30, retries=0)
            grpc_requests = [grpc_client.predict_request(r) for r in requests]

            def make_rest():
                client = RestClient(rest_url, model_name=names[label], timeout=30, retries=0)
                return lambda r: client.predict(r)

            def make_grpc():
                client = GrpcClient(grpc_target, model_name=names[label], timeout=30, retries=0)
                return lambda p: client.stub.Predict(p, timeout=30)

            entry = {
                "export": str(base / str(version)),
                "history_length": len(histories[0]),
                "in_process": timed(lambda t: in_process(t), tensors, args.warmup, args.requests),
                "rest": timed(lambda r: rest.predict(r), requests, args.warmup, args.requests),
                "grpc": timed(lambda p: grpc_client.stub.Predict(p, timeout=30), grpc_requests, args.warmup,
                              args.requests),
            }
            if args.concurrency > 0:
                entry["rest"]["concurrent"] = concurrent_throughput(make_rest, requests, args.requests,
                                                                    args.concurrency)
                entry["grpc"]["concurrent"] = concurrent_throughput(make_grpc, grpc_requests, args.requests,
                                                                    args.concurrency)
            rest.close()
            grpc_client.close()
            results[label] = entry
            print(f"[serving_latency] {label}: " + ", ".join(
                f"{path} p50 {entry[path]['p50_ms']:.2f} ms p99 {entry[path]['p99_ms']:.2f} ms"
                for path in ("in_process", "rest", "grpc")), flush=True)
    finally:
        stop_server(process)
        if mode == "smoke":
            shutil.rmtree(workdir, ignore_errors=True)

    payload = {
        "mode": mode,
        "settings": {"requests": args.requests, "warmup": args.warmup, "concurrency": args.concurrency,
                     "history_length": args.history_length, "batch_size": 1,
                     "server": "python -m tfrec_lm.serve (subprocess, 127.0.0.1)"},
        "results": results,
        "notes": [
            "single-user requests; latency is client-observed wall time per request",
            "server and clients share this machine's CPU cores",
            "smoke mode: a tiny model on synthetic data (48 items); not representative of a real catalog"
            if mode == "smoke" else "exports given with --export-base",
        ],
    }
    path = write_result(args.output, payload)
    print(f"[serving_latency] wrote {path}", flush=True)
    return payload


if __name__ == "__main__":
    main()
