"""Side by side: training throughput and serving latency of the two user towers.

Both towers use the pretrained encoder (frozen) on MovieLens-100K training examples, the
same batch size and the same steps; the history-text tower runs BERT over each composed
history text, the item-sequence tower gathers cached item encodings. Serving latency is
one user with a 50-item history through each tower's exported `serving_default`
(brute-force index, so the tower is what differs). Output:
`benchmarks/results/user_towers.json`.

    python benchmarks/user_towers.py [--steps 10] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import write_result  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from tfrec_lm.config import TrainConfig
    from tfrec_lm.data.split import build_sequences, build_vocab, leave_one_out, train_interaction_counts
    from tfrec_lm.evaluation.export_eval import history_requests
    from tfrec_lm.registry.model_versions import ModelVersions
    from tfrec_lm.serving_module import ServingModule
    from tfrec_lm.data.prepare import examples_to_features, load_training_data
    from tfrec_lm.fitting import make_optimizer
    from tfrec_lm.models.factory import build_model, pretrained_encoder_factory

    base = TrainConfig(negatives="in-batch", batch_size=args.batch_size)
    dataset = load_training_data(base)
    vocab = build_vocab(dataset.items)
    split = leave_one_out(build_sequences(dataset, vocab), base.max_history)
    counts = train_interaction_counts(split)
    factory = pretrained_encoder_factory(base.encoder)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(split.train), size=args.batch_size * (args.steps + 1), replace=False)
    batches = tf.data.Dataset.from_tensor_slices(examples_to_features(split.train.take(rows))).batch(args.batch_size)
    long_user = next(i for i, h in enumerate(split.test.exclude) if len(h) >= 50)
    request = history_requests([split.test.exclude[long_user][-50:]], [np.arange(1, 51, dtype=np.int64)],
                               vocab.ids)
    results = {}
    workdir = Path(tempfile.mkdtemp(prefix="tfrec_lm_towers_"))
    for tower in ("item-sequence", "history-text"):
        config = base.replace(user_tower=tower)
        model = build_model(config, dataset.items["text"].tolist(), factory)
        model.compile(optimizer=make_optimizer(config, total_steps=args.steps + 1))
        model.fit(batches.take(1), epochs=1, verbose=0)  # trace
        start = time.perf_counter()
        model.fit(batches.skip(1), epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        module = ServingModule(model, vocab.ids, counts, top_k=10, index="brute-force")
        path = ModelVersions(workdir, tower).save(module, {})
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        ids_request, times = tf.constant(request[0].astype(str)), tf.constant(request[1])
        serve(history_item_ids=ids_request, history_timestamps=times)
        samples = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            serve(history_item_ids=ids_request, history_timestamps=times)
            samples.append(time.perf_counter() - t0)
        results[tower] = {
            "train_examples_per_second": args.steps * args.batch_size / seconds,
            "train_seconds": seconds,
            "serving_p50_ms": 1000 * float(np.percentile(samples, 50)),
            "serving_p99_ms": 1000 * float(np.percentile(samples, 99)),
        }
        if tower == "history-text":
            # The encoder's own forward pass on the same composed tokens, timed in turn
            # with the export (interleaved, so both see the same machine load).
            history = tf.constant(vocab.index(request[0][0].astype(str))[None, :])
            ids, mask = model.user_tower.composer(history)
            width = int(tf.reduce_sum(mask))
            ids, mask = ids[:, :width], mask[:, :width]
            forward = tf.function(lambda: model.user_tower.encoder.bert(input_ids=ids, attention_mask=mask,
                                                                        training=False).last_hidden_state)
            forward()
            encoder_samples, serve_samples = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                forward()
                encoder_samples.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                serve(history_item_ids=ids_request, history_timestamps=times)
                serve_samples.append(time.perf_counter() - t0)
            results[tower].update({
                "tokens": width,
                "encoder_forward_p50_ms": 1000 * float(np.percentile(encoder_samples, 50)),
                "serving_interleaved_p50_ms": 1000 * float(np.percentile(serve_samples, 50)),
            })
            results[tower]["serving_over_encoder_forward"] = (
                results[tower]["serving_interleaved_p50_ms"] / results[tower]["encoder_forward_p50_ms"])
        print(tower, results[tower], flush=True)
    ratio = (results["item-sequence"]["train_examples_per_second"]
             / results["history-text"]["train_examples_per_second"])
    payload = {"settings": {"steps": args.steps, "batch_size": args.batch_size, "encoder": base.encoder,
                            "finetune": base.finetune, "history_tokens": base.history_tokens,
                            "max_history": base.max_history, "negatives": "in-batch"},
               "towers": results, "train_throughput_ratio_item_sequence_over_history_text": ratio,
               "serving_latency_ratio_history_text_over_item_sequence":
                   results["history-text"]["serving_p50_ms"] / results["item-sequence"]["serving_p50_ms"]}
    print(f"item-sequence trains {ratio:.1f}x faster -> {write_result('user_towers', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
