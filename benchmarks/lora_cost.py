"""What a training step costs with `--finetune lora` against the frozen default (issue 30 item 5).

Both models are built on the pretrained encoder and MovieLens-100K with the default options
(`--set` changes both; the lora one also gets `--finetune lora`), compiled as `fit` compiles
them, and timed over the same training batches: `--steps` steps each after two untimed
(tracing) steps, alternated in `--rounds` rounds so that machine noise hits both alike. For
lora it also times the one-off lower-state cache (`ItemTower.prepare_lora`) and the refresh of
the adapted item table (`ItemTower.refresh_adapted_table`, every `--lora-refresh-steps` steps
and at each epoch end), and estimates an epoch as steps x step + refreshes x refresh.

Output: `benchmarks/results/lora_cost.json`.

    python benchmarks/lora_cost.py
    python benchmarks/lora_cost.py --set trainable_layers=1 lora_rank=4
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import parse_sets, write_result  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--refreshes", type=int, default=2, help="timed refreshes of the adapted table")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config changes for both models")
    parser.add_argument("--output", default="lora_cost")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from tfrec_lm.config import TrainConfig
    from tfrec_lm.data.prepare import prepare_data
    from tfrec_lm.distribute import make_strategy
    from tfrec_lm.fitting import training_dataset, warm_start_and_compile
    from tfrec_lm.models.factory import build_for_training, pretrained_encoder_factory

    changes = parse_sets(args.set)
    frozen_config = TrainConfig.from_dict({**changes, "finetune": "frozen", "export": False,
                                           "cache_text_vectors": False})
    lora_config = TrainConfig.from_dict({**changes, "finetune": "lora", "export": False})
    data = prepare_data(frozen_config)
    factory = pretrained_encoder_factory(frozen_config.encoder)
    strategy = make_strategy("default")
    steps_per_epoch = math.ceil(len(data.train_examples) / frozen_config.batch_size)
    runners, setup = {}, {}
    for name, config in (("frozen", frozen_config), ("lora", lora_config)):
        tf.keras.utils.set_random_seed(config.seed)
        start = time.perf_counter()
        model = build_for_training(config, data, factory, strategy)
        setup[name] = {"build_seconds": time.perf_counter() - start}
        warm_start_and_compile(model, config, total_steps=config.epochs * steps_per_epoch)
        step = model.make_train_function()
        iterator = iter(training_dataset(data.train_examples, config))
        for _ in range(2):
            float(step(iterator)["loss"])
        runners[name] = {"model": model, "step": step, "iterator": iterator, "seconds": []}
    tower = runners["lora"]["model"].item_tower
    lora = tower._lora
    setup["lora"].update(lower_states_shape=list(lora.states.shape),
                         lower_states_megabytes=lora.states.shape.num_elements() * 4 / 2 ** 20)
    start = time.perf_counter()
    tower._lora.states = None  # time the one-off cache alone
    tower.prepare_lora()
    setup["lora"]["prepare_lora_seconds"] = time.perf_counter() - start
    tower.refresh_adapted_table()  # traces
    refresh = []
    for _ in range(args.refreshes):
        start = time.perf_counter()
        tower.refresh_adapted_table()
        refresh.append(time.perf_counter() - start)
    for _ in range(args.rounds):
        for runner in runners.values():
            start = time.perf_counter()
            for _ in range(args.steps):
                logs = runner["step"](runner["iterator"])
            float(logs["loss"])
            runner["seconds"].append((time.perf_counter() - start) / args.steps)
    per_step = {name: float(np.median(r["seconds"])) for name, r in runners.items()}
    refresh_seconds = float(np.median(refresh))
    refreshes_per_epoch = steps_per_epoch // lora_config.lora_refresh_steps + 1
    epoch = {"frozen": steps_per_epoch * per_step["frozen"],
             "lora": steps_per_epoch * per_step["lora"] + refreshes_per_epoch * refresh_seconds}
    payload = {"settings": {"steps": args.steps, "rounds": args.rounds, "batch_size": frozen_config.batch_size,
                            "steps_per_epoch": steps_per_epoch, "epochs": frozen_config.epochs,
                            "lora": {k: getattr(lora_config, k) for k in (
                                "trainable_layers", "lora_rank", "lora_alpha", "lora_refresh_steps")}},
               "setup": setup, "step_seconds": per_step,
               "step_rounds": {name: r["seconds"] for name, r in runners.items()},
               "refresh_seconds": refresh_seconds, "refreshes_per_epoch": refreshes_per_epoch,
               "epoch_seconds_estimate": epoch,
               "training_seconds_estimate": {k: v * frozen_config.epochs for k, v in epoch.items()}}
    path = write_result(args.output, payload)
    print(f"step: frozen {per_step['frozen']:.3f} s, lora {per_step['lora']:.3f} s "
          f"({per_step['lora'] / per_step['frozen']:.1f}x); refresh {refresh_seconds:.2f} s x "
          f"{refreshes_per_epoch}/epoch; epoch estimate frozen {epoch['frozen']:.0f} s, lora {epoch['lora']:.0f} s; "
          f"lora setup {setup['lora']['prepare_lora_seconds']:.1f} s -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
