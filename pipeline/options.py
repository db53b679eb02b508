"""The training run's own numeric options, declared once: the CLI builds its types from them and
:func:`check_run_options` applies the same rules in the library (finite, in range)."""

from __future__ import annotations

from typing import Any

from pipeline.errors import HeadError, OptionError
from pipeline.heads.registry import Option

# --image-size: below 32 px the keras.applications CNNs refuse to build; above 1024 px one image's first
# activations take gigabytes (10,000 px: ~6 GB for ResNet50's first convolution alone).
IMAGE_SIZE_RANGE = (32, 1024)

RUN_OPTIONS = {o.name: o for o in (
    Option("holdout", float, 0.0, "fraction held out for evaluation, split by a hash of each image path",
           low=0.0, high=1.0, high_open=True),
    Option("epochs", int, None, "passes over each task [default: 1, or the head's own]", low=1, high=10_000),
    Option("eval_every", int, 0, "evaluate every N rows (learning curve); 0 with --plot, --log-dir or --report: at 32, 64, 128, ... rows", low=0, high=2**62),
    Option("shuffle_buffer", int, 0, "shuffle rows in a buffer of N rows (and chunk order)", low=0, high=10**8),
    Option("chunk_rows", int, 4096, "rows read per chunk", low=1, high=10**7),
    Option("seed", int, 0, "seed of every random choice (shuffle, class order, sampling)", low=0, high=2**32 - 1),
    Option("checkpoint_every", int, 0, "save to --model-out every N rows", low=0, high=2**62),
    Option("increment", int, None, "class-incremental: N classes per task, in --class-order; when N does not "
           "divide the classes the last task is smaller (5 classes by 2: tasks of 2, 2, 1)", low=1, high=10**6),
    Option("first_increment", int, None, "class-incremental: N classes in the first task, then --increment per "
           "task (B50 Inc10: --first-increment 50 --increment 10)", low=1, high=10**6),
    Option("orders", int, None, "class-incremental: repeat the run over K distinct class orders and report mean "
           "and std; order 1 is the shuffle seeded with --order-seed, each next one the shuffle of the next seed "
           "that splits the classes into tasks differently (seeds repeating an earlier order are skipped; "
           "refused when K exceeds the number of distinct splits)", low=1, high=1000),
    Option("order_seed", int, None, "class-incremental: seed of the class order (the shuffle for --increment) "
           "[default: --seed]; --seed still seeds the head and the row shuffle", low=0, high=2**32 - 1),
)}


def check_run_options(values: dict[str, Any]) -> dict[str, Any]:
    """The run options validated (an OptionError naming the first that does not fit)."""
    out = {}
    for name, value in values.items():
        try:
            out[name] = RUN_OPTIONS[name].check(value, "train-incremental")
        except HeadError as exc:
            raise OptionError(str(exc).removeprefix("train-incremental: ")) from None
    return out
