"""Defaults shared by several heads and the run, declared once.

The exemplar budget and the herding pool are options of ``nme``, of ``mlp``'s memory methods and of
``--replay``; the SGD learning-rate rule is that of ``logreg`` and ``softmax`` on both engines. Every
signature, declaration and help text reads them from here.

>>> default_lr("sgd", 1280), default_lr("adam", 1280), default_lr("sgd", None)
(0.00078125, 0.0003, None)
"""

from __future__ import annotations

from pipeline.heads.registry import Option

DEFAULT_HEAD = "logreg"
DEFAULT_MEMORY = 2000     # exemplar rows, all classes together
DEFAULT_POOL_SIZE = 1000  # herding candidates kept per class
ADAM_LR = 3e-4

MEMORY_OPTION = Option("memory", int, DEFAULT_MEMORY, "exemplar budget in rows, all classes together",
                       low=1, high=10**9)
POOL_OPTION = Option("pool_size", int, DEFAULT_POOL_SIZE, "candidates kept per class for herding (reservoir sample)",
                     low=1, high=100_000)
REPLAY_OPTIONS = (MEMORY_OPTION, POOL_OPTION)  # --memory and --pool-size, read by --replay too
LR_DEFAULT_TEXT = f"1/feature_dim for sgd, {ADAM_LR:g} for adam, set when the first rows arrive"


def default_lr(optimizer: str, n_features: int | None) -> float | None:
    """Learning rate of the linear heads for standardised features (None: not known until the features are).

    With standardised inputs ``|x|^2`` is about the dimension D, so an SGD step
    of ``1/D`` moves the margin by about one unit: on MobileNet features it was
    the best of a grid at both D=256 and D=1280 (README, "Choosing defaults").
    Adam is scale-free per coordinate; 3e-4 was best at both.
    """
    if optimizer == "adam":
        return ADAM_LR
    return 1.0 / n_features if n_features else None
