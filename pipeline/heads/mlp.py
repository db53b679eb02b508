"""A trainable MLP head over stored features, with continual-learning methods.

A small network (``hidden`` ReLU layers, default one of 512; ``hidden=0`` is
a linear softmax) is trained by mini-batch Adam on each chunk it receives
(``chunk_passes`` passes over the chunk, default 1: the training loop repeats each
task ``--epochs`` times; ``batch_size`` rows per step, the last
batch padded with zero-weight rows so the compiled step is traced once per
output size). The softmax output grows a small random column when a class
arrives (old logits are unchanged at that moment). Adam's state is per
parameter: the hidden layers' moments and step count go on across tasks; each
output column's moments and step count (``column_steps_``) start when its
class arrives and go on after that (old columns keep theirs), except with ER,
whose whole output layer restarts its state when classes arrive.

Inputs are standardised with running statistics of the first task, frozen
after it: later tasks then never move the inputs under the old weights, the
frozen copies (LwF, iCaRL), the EWC anchors or the stored exemplars.

``method`` (see :mod:`pipeline.heads.cl`): finetune, er, ewc, lwf, icarl, agem.
Hooks: ``before_task(task, classes)``, ``after_task()`` (``end_task`` is the same).

Weights live as numpy arrays; the compiled step (Keras backend: TensorFlow,
JAX or torch, the one extraction uses) is rebuilt when needed and never saved.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = np.vstack([rng.normal(-2, 1, (64, 4)), rng.normal(2, 1, (64, 4))]).astype("float32")
>>> head = MLPHead(hidden=0, chunk_passes=20, batch_size=16, lr=0.05)
>>> head.partial_fit(X, ["a"] * 64 + ["b"] * 64).predict(np.array([[-2.0] * 4, [2.0] * 4])).tolist()
['a', 'b']
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np

from pipeline import keras_runtime as runtime
from pipeline.errors import HeadError
from pipeline.heads.base import Head
from pipeline.heads.defaults import DEFAULT_MEMORY, DEFAULT_POOL_SIZE, MEMORY_OPTION, POOL_OPTION
from pipeline.heads.registry import Capabilities, Option, register
from pipeline.heads.cl import ALL_METHOD_OPTIONS, METHODS, Method, make_method, method_settings
from pipeline.heads.cl.net import forward, grow_output, init_params, pad_like, softmax

BETA1, BETA2, EPS = 0.9, 0.999, 1e-7   # Keras' Adam defaults
GROUP = 16   # mini-batches per compiled call (fewer, a power of 2, when a chunk has fewer batches)
_STEPS: dict[tuple, Any] = {}   # compiled steps, per backend, method and options


@register
class MLPHead(Head):
    name = "mlp"
    summary = ("a small Keras network trained by mini-batch Adam, with a continual-learning --method "
               "(finetune, er, ewc, lwf, icarl, agem)")
    options = (
        Option("hidden", int, 512, "hidden ReLU units (one layer); 0 = a linear softmax", low=0, high=65536),
        Option("method", str, "finetune", "continual-learning method", choices=tuple(METHODS)),
        Option("lr", float, 1e-3, "learning rate (Adam)", low=0.0, low_open=True),
        Option("batch_size", int, 64, "rows per gradient step", low=1, high=2**31 - 1),
        Option("chunk_passes", int, 1, "passes over each chunk (--epochs repeats whole tasks)", low=1, high=10**6),
        Option("seed", int, 0, "seed of the weights and mini-batch order", low=0, high=2**32 - 1, from_run=True),
        MEMORY_OPTION,
        POOL_OPTION,
        Option("ewc_lambda", float, 1.0, "ewc: weight of the quadratic penalty (Fisher normalised to mean 1)", low=0.0),
        Option("gamma", float, 1.0, "ewc: decay of the accumulated Fisher (online EWC)", low=0.0, high=1.0),
        Option("temperature", float, 2.0, "lwf: distillation temperature", low=0.0, low_open=True),
        Option("distill_weight", float, 1.0, "lwf: weight of the distillation loss", low=0.0),
    )
    capabilities = Capabilities(keeps_exemplars=False, mini_batches=True, default_epochs=10,
                                keeps_exemplars_when=(("method", tuple(n for n, m in METHODS.items() if m.uses_memory)),),
                                class_incremental="grows an output column (old logits kept)")
    state_classes = tuple(METHODS.values())  # a method is saved with the head

    state_schema = {"steps_": "count", "column_steps_": "array[*]", "calls_": "count", "tasks_done_": "count"}  # pipeline.heads.state_check

    def _check_state(self, dims: dict[str, int]) -> None:
        """Layers chained from D inputs: (D, h1), (h1,), ..., (h_k, out), (out,), with out >= 1."""
        params = self.params_
        if params is None:
            return
        if not isinstance(params, list) or len(params) != 2 * (len(self.hidden) + 1):
            raise ValueError(f"params_ holds {len(params) if isinstance(params, list) else type(params).__name__} "
                             f"arrays; expected {2 * (len(self.hidden) + 1)} for hidden layers {self.hidden}")
        fan_in = dims["D"]
        for k in range(0, len(params), 2):
            W, b = params[k], params[k + 1]
            if not (isinstance(W, np.ndarray) and isinstance(b, np.ndarray) and W.dtype.kind == "f"
                    and b.dtype.kind == "f" and W.ndim == 2 and W.shape[0] == fan_in and b.shape == (W.shape[1],)):
                raise ValueError(f"layer {k // 2 + 1} has weights of shapes {np.shape(W)} and {np.shape(b)}; "
                                 f"expected ({fan_in}, N) and (N,)")
            fan_in = W.shape[1]
        if params and self.column_steps_.shape != params[-1].shape:
            raise ValueError(f"column_steps_ has shape {self.column_steps_.shape}; expected {params[-1].shape} "
                             "(one step count per output column)")
        if self.column_steps_.dtype.kind not in "iu" or (self.column_steps_ < 0).any():
            raise ValueError(f"column_steps_ holds {self.column_steps_.dtype} values down to "
                             f"{self.column_steps_.min() if self.column_steps_.size else 0}; expected step counts "
                             "(integers >= 0)")
        if self.adam_ is not None and not (len(self.adam_) == 2 and all(
                len(m) == len(params) and all(np.shape(a) == p.shape for a, p in zip(m, params)) for m in self.adam_)):
            raise ValueError("adam_ moments do not match the shapes of params_")

    def __init__(self, hidden: int | Sequence[int] = 512, batch_size: int = 64, chunk_passes: int = 1,
                 lr: float = 1e-3, seed: int = 0, method: str = "finetune", memory: int = DEFAULT_MEMORY,
                 pool_size: int = DEFAULT_POOL_SIZE, ewc_lambda: float = 1.0, gamma: float = 1.0, temperature: float = 2.0,
                 distill_weight: float = 1.0):
        super().__init__()
        self.hidden = tuple(h for h in (int(h) for h in np.atleast_1d(hidden)) if h > 0)
        if batch_size < 1 or chunk_passes < 1 or lr <= 0:
            raise HeadError(f"mlp: batch_size and chunk_passes must be >= 1 and lr > 0, "
                            f"got {batch_size}, {chunk_passes}, {lr}")
        self.batch_size, self.chunk_passes = int(batch_size), int(chunk_passes)
        self.lr, self.seed = float(lr), int(seed)
        self.method_name = method
        given = {"memory": memory, "pool_size": pool_size, "ewc_lambda": ewc_lambda, "gamma": gamma,
                 "temperature": temperature, "distill_weight": distill_weight}
        self.method: Method = make_method(method, seed=seed, **method_settings(method, given))
        self.params_: list[np.ndarray] | None = None
        self.adam_: list[list[np.ndarray]] | None = None   # [first moments, second moments]
        self.steps_ = 0
        self.column_steps_ = np.zeros(0, np.int64)   # Adam steps of each output column since its class arrived
        self.calls_ = 0
        self.tasks_done_ = 0
        self.scaler_: dict[str, Any] = {"n": 0, "mean": None, "m2": None, "frozen": False}
        self.cache_: dict[str, Any] = {}
        self._step: Any = None

    # -- saving: data only ------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_step"] = None
        state["cache_"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "column_steps_" not in state:   # saved before each output column had its own step count
            # (a scalar output_steps_: the output's moments restarted at its last growth; before that, none:
            # the output's moments were as old as the hidden layers')
            steps = state.pop("output_steps_", state.get("steps_", 0))
            params = state.get("params_")
            n_out = params[-1].shape[0] if isinstance(params, list) and params else 0
            state["column_steps_"] = np.full(n_out, int(steps), np.int64)
        self.__dict__.update(state)

    def settings(self) -> dict[str, Any]:
        hidden = list(self.hidden) if len(self.hidden) > 1 else (self.hidden[0] if self.hidden else 0)
        return {"hidden": hidden, "batch_size": self.batch_size, "chunk_passes": self.chunk_passes, "lr": self.lr,
                "seed": self.seed, "method": self.method_name, **ALL_METHOD_OPTIONS, **self.method.options()}

    def describe(self) -> dict[str, Any]:
        return {"method": self.method_name, "parameters": sum(p.size for p in self.params_ or []),
                "tasks_done": self.tasks_done_, "optimizer_steps": self.steps_, **self.method.describe()}

    # -- inputs -------------------------------------------------------------------
    def _update_scaler(self, X: np.ndarray) -> None:
        s = self.scaler_
        if s["frozen"]:
            return
        self.cache_.pop("scale", None)
        Xd = np.asarray(X, np.float64)
        n, mean, m2 = len(Xd), Xd.mean(axis=0), Xd.var(axis=0) * len(Xd)
        if s["mean"] is None:
            s.update(n=n, mean=mean, m2=m2)
            return
        total = s["n"] + n   # Chan et al.'s pairwise update
        delta = mean - s["mean"]
        s["mean"] = s["mean"] + delta * n / total
        s["m2"] = s["m2"] + m2 + delta ** 2 * s["n"] * n / total
        s["n"] = total

    def standardise(self, X: np.ndarray) -> np.ndarray:
        """``(X - mean) / std`` in float32 (statistics of the first task)."""
        if "scale" not in self.cache_:
            s = self.scaler_
            std = np.sqrt(s["m2"] / max(s["n"], 1))
            self.cache_["scale"] = (s["mean"].astype(np.float32), (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32))
        mean, inv = self.cache_["scale"]
        return (np.asarray(X, np.float32) - mean) * inv

    def class_index(self, labels: Sequence[Hashable]) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.classes_)}
        return np.array([lookup[c] for c in labels], np.int32)

    # -- growth ---------------------------------------------------------------------
    def _add_class(self, label: Hashable) -> None:
        if self.params_ is not None:
            self._grow()

    def _network(self) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """``(params_, adam_)``, which exist once a row was learnt."""
        if self.params_ is None or self.adam_ is None:
            raise HeadError(f"{self.name} has not learnt anything yet: call partial_fit first")
        return self.params_, self.adam_

    def _grow(self) -> None:
        n_out = len(self.classes_)
        if self.params_ is None:
            assert self.n_features_in_ is not None, "the network is built once the feature count is known"
            rng = np.random.default_rng([self.seed, 1])
            self.params_ = init_params(self.n_features_in_, self.hidden, n_out, rng)
            self.adam_ = [[np.zeros_like(p) for p in self.params_] for _ in range(2)]
            self.column_steps_ = np.zeros(n_out, np.int64)
        elif self.params_[-1].shape[0] < n_out:
            params, adam = self._network()
            self.params_ = grow_output(params, n_out, np.random.default_rng([self.seed, 3, n_out]))
            # Adam per parameter: old columns keep their moments and step counts, new ones start at zero
            # (restarting the whole output layer's, as a new PyTorch Linear does, cost finetune 19 points and
            # A-GEM 13 on Imagenette-mini, 10 orders; docs/continual-learning.md); ER restarts it (Method.restart_output_state)
            if self.method.restart_output_state:
                self.adam_ = [[*moments[:-2], np.zeros_like(self.params_[-2]), np.zeros_like(self.params_[-1])]
                              for moments in adam]
                self.column_steps_ = np.zeros(n_out, np.int64)
            else:
                self.adam_ = [pad_like(moments, self.params_) for moments in adam]
                self.column_steps_ = np.concatenate([self.column_steps_,
                                                     np.zeros(n_out - len(self.column_steps_), np.int64)])
        self.cache_.clear()

    # -- hooks ------------------------------------------------------------------------
    def before_task(self, task: int, classes: Sequence[Hashable]) -> None:
        """Before task ``task``'s first row: give its classes their output columns (optional)."""
        self._class_indices(list(classes))
        if self.n_features_in_ is not None:
            self._grow()
        self.method.before_task(self, classes)

    def after_task(self) -> None:
        """After a task: freeze the scaler, then the method's work (Fisher, frozen copy, exemplars)."""
        if self.params_ is None:
            return
        self.scaler_["frozen"] = True
        self.method.after_task(self)
        self.tasks_done_ += 1
        self.cache_.clear()

    def end_task(self) -> None:
        self.after_task()

    # -- learning ------------------------------------------------------------------------
    def _learn(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        k = self._class_indices(y).astype(np.int32)
        self._update_scaler(X)
        self._grow()
        self.method.observe(self, X, y, paths)
        Z = self.standardise(X)
        rng = np.random.default_rng([self.seed, 2, self.calls_])
        self.calls_ += 1
        idx, w = self._schedule(len(Z), rng)
        run = self._compiled_step()
        weights, adam = self._network()
        params, m, v = (runtime.to_tensor(a) for a in (weights, *adam))
        consts = runtime.to_tensor(self.method.consts(self))
        t = np.concatenate([[self.steps_], self.column_steps_]).astype(np.float32)
        group = len(idx) if len(idx) < GROUP else GROUP
        pass_rest: list[np.ndarray] = []   # the memory's current shuffled pass, carried across the groups
        for g in range(0, len(idx), group):
            batch = {"x": Z[idx[g:g + group]], "y": k[idx[g:g + group]], "w": w[g:g + group]}
            if self.method.uses_memory:
                drawn = self.method.memory_batch(self, rng, group * self.batch_size, pass_rest)
                if drawn is not None:
                    batch["xr"] = drawn[0].reshape(group, self.batch_size, -1)
                    batch["yr"] = drawn[1].reshape(group, self.batch_size)
            params, m, v, t = run(params, m, v, t, np.float32(self.lr), runtime.to_tensor(batch), consts)
        taken = int(np.count_nonzero(w.sum(axis=1)))   # all-zero padding batches make no step
        self.steps_ += taken
        self.column_steps_ = self.column_steps_ + taken
        self.params_ = runtime.to_numpy(params)
        self.adam_ = [runtime.to_numpy(m), runtime.to_numpy(v)]
        self.cache_.clear()

    def _schedule(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Row indices and weights of every mini-batch of ``chunk_passes`` shuffled passes, (batches, batch_size).

        The last batch of a pass is padded with weight-0 rows, and the batch count
        with all-zero batches (no update) up to a multiple of GROUP, or of the next
        power of 2 when there are fewer, so the compiled loop sees at most five shapes.
        """
        B = self.batch_size
        per_epoch = -(-n // B)
        idx = np.zeros((self.chunk_passes * per_epoch, B), np.int64)
        w = np.zeros((self.chunk_passes * per_epoch, B), np.float32)
        for e in range(self.chunk_passes):
            order = rng.permutation(n)
            flat_idx = np.resize(order, per_epoch * B)
            flat_w = (np.arange(per_epoch * B) < n).astype(np.float32)
            idx[e * per_epoch:(e + 1) * per_epoch] = flat_idx.reshape(per_epoch, B)
            w[e * per_epoch:(e + 1) * per_epoch] = flat_w.reshape(per_epoch, B)
        # a chunk of few batches (a small task, the first blocks of progressive_fit) is padded only up to
        # the next power of 2: padded batches cost a whole step each in the compiled loop
        pad = -len(idx) % min(GROUP, 1 << max(len(idx) - 1, 0).bit_length())
        return np.vstack([idx, np.zeros((pad, B), np.int64)]), np.vstack([w, np.zeros((pad, B), np.float32)])

    def _compiled_step(self) -> Any:
        if self._step is None:
            # the step reads only the method's options (its arrays come in as arguments): share it
            key = (runtime.backend(), type(self.method), tuple(sorted(self.method.options().items())))
            if key not in _STEPS:
                _STEPS[key] = runtime.compile_fn(_make_step(self.method))
            self._step = _STEPS[key]
        return self._step

    def progressive_fit(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray,
                        paths: Sequence[str] | None = None) -> np.ndarray:
        """Predict, then learn, in blocks that double with the rows seen (from one mini-batch).

        One big chunk is then still measured row block by row block, instead of
        being predicted wholly by a head that has learnt nothing.
        """
        X = self._check_X(X)
        y = np.asarray(y, dtype=object)
        preds = np.full(len(X), None, dtype=object)
        start = 0
        while start < len(X):
            stop = min(len(X), start + max(self.batch_size, self.rows_seen_))
            if self.params_ is not None and self.classes_:
                preds[start:stop] = self.predict(X[start:stop])
            self.partial_fit(X[start:stop], y[start:stop], None if paths is None else paths[start:stop])
            start = stop
        return preds

    # -- prediction ------------------------------------------------------------------------
    def _proba(self, X: np.ndarray) -> np.ndarray:
        if self.scaler_["mean"] is None or self.params_ is None:  # classes announced, no row learnt yet
            return np.full((len(X), len(self.classes_)), 1.0 / len(self.classes_))
        Z = self.standardise(X)
        own = self.method.proba(self, Z)
        return own if own is not None else softmax(self.logits(X))

    def logits(self, X: np.ndarray) -> np.ndarray:
        """The network's output scores, (n, classes)."""
        self._check_fitted()
        return forward(self._network()[0], self.standardise(self._check_X(X)))[1]

    def embedding(self, X: np.ndarray) -> np.ndarray:
        """The last hidden layer's output (the standardised input when ``hidden=0``)."""
        return forward(self._network()[0], self.standardise(self._check_X(X)))[0]

    def to_keras(self) -> Any:
        """The network (standardisation excluded) as a Keras model with these weights, for export."""
        keras = runtime.keras()
        layers = [keras.Input((self.n_features_in_,))]
        layers += [keras.layers.Dense(h, activation="relu") for h in self.hidden]
        layers.append(keras.layers.Dense(len(self.classes_), activation="softmax"))
        model = keras.Sequential(layers)
        model.set_weights(self.params_)
        return model


def _make_step(method: Method) -> Any:
    """One Adam step per mini-batch of ``batches`` (up to GROUP) of ``method``'s loss in one compiled loop, a pure function of tensors.

    A batch whose weights are all zero (padding) leaves parameters, moments and
    the step count unchanged.
    """
    ops = runtime.keras().ops
    value_and_grad = runtime.value_and_grad

    def run(params: list[Any], m: list[Any], v: list[Any], t: Any, lr: Any, batches: dict[str, Any],
            consts: dict[str, Any]) -> tuple[list[Any], list[Any], list[Any], Any]:
        def body(i: Any, carry: tuple) -> tuple:
            params, m, v, t = carry
            batch = {key: value[i] for key, value in batches.items()}
            active = ops.cast(ops.sum(batch["w"]) > 0, "float32")
            _, grads = method.loss_and_grads(ops, value_and_grad, params, batch, consts)
            t = t + active   # [steps of the hidden layers, steps of each output column since its class arrived]
            rates = active * lr * ops.sqrt(1.0 - ops.power(BETA2, t)) / (1.0 - ops.power(BETA1, ops.maximum(t, 1.0)))
            hidden_rate, column_rates = rates[0], rates[1:]
            m = [a + active * (1.0 - BETA1) * (g - a) for a, g in zip(m, grads)]
            v = [b + active * (1.0 - BETA2) * (g * g - b) for b, g in zip(v, grads)]
            out = len(params) - 2
            params = [p - (column_rates if j >= out else hidden_rate) * a / (ops.sqrt(b) + EPS)
                      for j, (p, a, b) in enumerate(zip(params, m, v))]
            return params, m, v, t

        return ops.fori_loop(0, batches["w"].shape[0], body, (params, m, v, t))

    return run
