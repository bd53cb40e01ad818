"""Training throughput and time to quality per user tower and fine-tuning strategy.

Part 1, throughput: every configuration's model is built on the pretrained encoder and
MovieLens-100K training examples, then all are timed in interleaved rounds (each round
gives every configuration the same wall-clock slice in turn, so machine noise hits them
alike); examples/s is the median over rounds. Ratios are taken within the run:
item-sequence over history-text for each fine-tuning strategy at the same batch size and
negatives. Where a GPU is visible it also reports the model FLOP utilisation: the
encoder's analytic training FLOPs per example (6 x matmul parameters x tokens for the
trained layers, 2 x for frozen ones, plus attention) times examples/s, over the card's
peak for the compute dtype (`--peak-tflops` overrides the built-in table).

Part 2, time to quality: the one training function, validating every `--steps-per-epoch`
steps, under a `--budget-minutes` limit, for the configurations in `--quality`; the first
time validation NDCG@10 reaches `--target` (null when it did not within the budget).

Output: `benchmarks/results/training_throughput.json`.

    python benchmarks/training_throughput.py
    python benchmarks/training_throughput.py --quick
    python benchmarks/training_throughput.py --set mixed_precision=mixed_bfloat16   # GPU
    # the sequence encoder's newest-position query against every position, the default's step:
    python benchmarks/training_throughput.py --batch-size 128 --quality --output training_step_newest_query \
        --configs item-sequence/frozen/catalog item-sequence/frozen/catalog/every-query \
        item-sequence/frozen/catalog/xla
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import parse_sets, write_result  # noqa: E402

CONFIGS = {
    "item-sequence/frozen/catalog": {"negatives": "catalog"},
    # Reference for the newest-position query: the sequence encoder's last block on every
    # history position (`every_position_call`, the SequenceEncoder before 8513e93).
    "item-sequence/frozen/catalog/every-query": {"negatives": "catalog"},
    "item-sequence/frozen/catalog/xla": {"negatives": "catalog", "jit_compile": True},
    "item-sequence/frozen/in-batch": {},
    "item-sequence/top-k/in-batch": {"finetune": "top-k"},
    "item-sequence/full/in-batch": {"finetune": "full"},
    # Reference for encoding each distinct item of a batch once: the encoder over every
    # history position (ItemTower.unique_items off, as before that change).
    "item-sequence/top-k/in-batch/every-position": {"finetune": "top-k"},
    "history-text/frozen/in-batch": {"user_tower": "history-text"},
    "history-text/top-k/in-batch": {"user_tower": "history-text", "finetune": "top-k"},
    "history-text/full/in-batch": {"user_tower": "history-text", "finetune": "full"},
}
# Ratio name -> (configuration, its reference), both measured in the same run.
RATIOS = {
    "newest_query_over_every_query_frozen_catalog": ("item-sequence/frozen/catalog",
                                                     "item-sequence/frozen/catalog/every-query"),
    "xla_over_default_frozen_catalog": ("item-sequence/frozen/catalog/xla", "item-sequence/frozen/catalog"),
    "unique_items_over_every_position_top_k": ("item-sequence/top-k/in-batch",
                                               "item-sequence/top-k/in-batch/every-position"),
}
# Dense peak TFLOP/s by compute dtype (vendor datasheets, SXM parts).
PEAK_TFLOPS = {"H100": {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.4, "float16": 989.4},
               "H200": {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.4, "float16": 989.4},
               "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0}}


def encoder_train_flops(bert_config, tokens: float, trained_layers: int) -> float:
    """Analytic FLOPs of one example through a BERT encoder: forward everywhere, backward where trained."""
    hidden, layers, inner = bert_config.hidden_size, bert_config.num_hidden_layers, bert_config.intermediate_size
    per_layer_matmul = 2 * (4 * hidden * hidden + 2 * hidden * inner) * tokens
    per_layer_attention = 2 * 2 * tokens * tokens * hidden
    forward = layers * (per_layer_matmul + per_layer_attention)
    backward = 2 * trained_layers * (per_layer_matmul + per_layer_attention)
    return float(forward + backward)


def model_flops_per_example(model, config, item_tokens: float, history_tokens: float) -> float:
    """Encoder FLOPs of one training example (the towers' small layers are left out)."""
    trained = {"frozen": 0, "top-k": config.trainable_layers, "full": None}[config.finetune]
    total = 0.0
    item_encoder = model.item_tower.encoder
    layers = item_encoder.bert.config.num_hidden_layers
    if config.finetune != "frozen" or model.item_tower.text_cache is None:
        total += encoder_train_flops(item_encoder.bert.config, item_tokens, layers if trained is None else trained)
    if config.user_tower == "history-text":
        bert = model.user_tower.encoder.bert
        total += encoder_train_flops(bert.config, history_tokens, layers if trained is None else trained)
    return total


def every_position_call(self, vectors, mask, ages=None, training=False):
    """`SequenceEncoder.call` as it was before 8513e93: every block, the last one included, on every
    position; position 0 is then read. The same values, for a reference timing."""
    import tensorflow as tf

    from tfrec_lm.layers.sequence_encoder import age_buckets

    x = vectors + self.positions[None, :tf.shape(vectors)[1], :]
    if self.time_features:
        x = x + tf.gather(self.age_embedding, age_buckets(ages))
    x = self.input_dropout(self.input_norm(x), training=training)
    mask = tf.cast(mask, tf.bool)
    attention_mask = tf.logical_and(mask[:, :, None], mask[:, None, :])
    for block in self.blocks:
        attended = block["attention"](x, x, attention_mask=attention_mask, training=training)
        x = block["norm1"](x + block["drop"](attended, training=training))
        hidden = block["ffn2"](block["ffn1"](x))
        x = block["norm2"](x + block["drop"](hidden, training=training))
    return (x * tf.cast(mask[:, :, None], x.dtype))[:, 0, :]


def gpu_peak(args, policy: str):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None, None
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    dtype = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(policy, "tf32")
    if args.peak_tflops:
        return name, args.peak_tflops
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return name, table[dtype]
    return name, None


def throughput(args, base, split, vocab, dataset, factory) -> dict:
    import tensorflow as tf

    from tfrec_lm.data.prepare import examples_to_features
    from tfrec_lm.fitting import make_optimizer
    from tfrec_lm.models.factory import build_model

    rng = np.random.default_rng(0)
    rows = rng.choice(len(split.train), size=min(len(split.train), 20_000), replace=False)
    features = examples_to_features(split.train.take(np.sort(rows)))
    data = tf.data.Dataset.from_tensor_slices(features).repeat().batch(args.batch_size).prefetch(tf.data.AUTOTUNE)
    runners = {}
    for name in args.configs:
        config = base.replace(**CONFIGS[name])
        model = build_model(config, dataset.items["text"].tolist(), factory)
        if name.endswith("/every-position"):
            model.item_tower.unique_items = False  # the reference: the encoder runs on every history position
        if name.endswith("/every-query"):
            encoder = model.user_tower.composer.sequence_encoder
            encoder.call = types.MethodType(every_position_call, encoder)
        # the schedule of a run of config.epochs passes over the training split
        steps = config.epochs * -(-len(split.train) // args.batch_size)
        model.compile(optimizer=make_optimizer(config, total_steps=steps), jit_compile=config.jit_compile)
        iterator = iter(data)
        step = model.make_train_function()
        step(iterator)  # trace
        item_tokens = float((model.item_tower.token_rows != 0).sum(axis=1).mean())
        history_tokens = float(config.history_tokens)
        runners[name] = {"step": step, "iterator": iterator, "config": config, "model": model,
                         "flops": model_flops_per_example(model, config, item_tokens, history_tokens),
                         "rates": []}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            steps, start = 0, time.perf_counter()
            while steps < 1 or time.perf_counter() - start < args.seconds_per_round:
                logs = runner["step"](runner["iterator"])
                steps += 1
            float(logs["loss"])  # wait for the device
            runner["rates"].append(steps * args.batch_size / (time.perf_counter() - start))
    policy = base.mixed_precision
    device, peak = gpu_peak(args, policy)
    out = {}
    for name, runner in runners.items():
        rate = float(np.median(runner["rates"]))
        out[name] = {"examples_per_second": rate, "rounds": runner["rates"],
                     "encoder_flops_per_example": runner["flops"],
                     "achieved_tflops": rate * runner["flops"] / 1e12}
        if peak:
            out[name]["model_flop_utilisation"] = out[name]["achieved_tflops"] / peak
        print(f"{name}: {rate:.1f} examples/s", flush=True)
    return {"configs": out, "device": device or "cpu", "peak_tflops": peak, "precision_policy": policy}


def time_to_quality(args, base, dataset, factory, workdir: Path) -> dict:
    from tfrec_lm.training import train

    out = {}
    for name in args.quality:
        config = base.replace(**CONFIGS[name], epochs=10_000, patience=10_000, export=False,
                              steps_per_epoch=args.steps_per_epoch, time_budget_minutes=args.budget_minutes,
                              output_dir=str(workdir / name.replace("/", "_")))
        result = train(config, dataset=dataset, encoder_factory=factory)
        reached = [s for s, v in zip(result.validation_seconds, result.validation_ndcg) if v >= args.target]
        out[name] = {"seconds_to_target": reached[0] if reached else None,
                     "best_validation_ndcg_at_10": max(result.validation_ndcg),
                     "curve": list(zip(result.validation_seconds, result.validation_ndcg)),
                     "examples_seen": len(result.validation_ndcg) * args.steps_per_epoch * config.batch_size}
        print(f"{name}: target {args.target} reached after {out[name]['seconds_to_target']} s "
              f"(best {out[name]['best_validation_ndcg_at_10']:.4f})", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds-per-round", type=float, default=4.0)
    references = ("/every-position", "/every-query")
    parser.add_argument("--quality", nargs="*", choices=[name for name in CONFIGS if not name.endswith(references)],
                        default=["item-sequence/frozen/catalog", "history-text/frozen/in-batch"])
    parser.add_argument("--target", type=float, default=0.05, help="validation NDCG@10 to reach")
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the accelerator's peak, if not in the table")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config changes for every run")
    parser.add_argument("--output", default="training_throughput",
                        help="result file name in benchmarks/results/ (a run of some --configs beside the full one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: two configs, one short round, no quality")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs = ["item-sequence/frozen/in-batch", "history-text/frozen/in-batch"]
        args.rounds, args.seconds_per_round, args.quality = 1, 1.0, []

    import tempfile

    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.split import build_sequences, build_vocab, leave_one_out
    from tfrec_lm.data.prepare import load_training_data
    from tfrec_lm.models.factory import pretrained_encoder_factory

    base = TrainConfig.from_dict({**PRESETS["cpu"], "negatives": "in-batch", "batch_size": args.batch_size,
                                  **parse_sets(args.set)})
    dataset = load_training_data(base)
    vocab = build_vocab(dataset.items)
    split = leave_one_out(build_sequences(dataset, vocab), base.max_history)
    factory = pretrained_encoder_factory(base.encoder)
    measured = throughput(args, base, split, vocab, dataset, factory)
    rates = {name: value["examples_per_second"] for name, value in measured["configs"].items()}
    ratios = {}
    for strategy in ("frozen", "top-k", "full"):
        a, b = f"item-sequence/{strategy}/in-batch", f"history-text/{strategy}/in-batch"
        if a in rates and b in rates:
            ratios[f"item_sequence_over_history_text_{strategy}"] = rates[a] / rates[b]
    for name, (measured_config, reference) in RATIOS.items():
        if measured_config in rates and reference in rates:
            ratios[name] = rates[measured_config] / rates[reference]
    quality = time_to_quality(args, base, dataset, factory, Path(tempfile.mkdtemp(prefix="tfrec_lm_ttq_")))
    payload = {"settings": {"batch_size": args.batch_size, "rounds": args.rounds,
                            "seconds_per_round": args.seconds_per_round, "target": args.target,
                            "steps_per_epoch": args.steps_per_epoch, "budget_minutes": args.budget_minutes,
                            "base": base.to_dict()},
               "throughput": measured, "ratios": ratios, "time_to_quality": quality}
    path = write_result(args.output, payload)
    print({k: round(v, 2) for k, v in ratios.items()}, "->", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
