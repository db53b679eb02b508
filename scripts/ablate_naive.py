"""A plain-PyTorch copy of Avalanche 0.6's Naive strategy, with one switch per difference to the ``mlp`` head.

Avalanche's Naive on ``IncrementalClassifier`` (1280 -> 512 ReLU -> output
grown on new classes, unseen classes masked at -1000, a new output ``Linear``
per expansion so its Adam state restarts, the hidden layer's Adam state kept),
Adam 1e-3, batch 64, 10 epochs, inputs standardised with the first task's
statistics, on the same features and class orders as ``compare_avalanche.py``.
Each switch moves one thing toward the ``mlp`` head; the table in
docs/continual-learning.md ("Against Avalanche") was made with it. Needs torch
(not a dependency of the project).

    python scripts/ablate_naive.py train.h5 --test val.h5 --switches zero_out
    python scripts/ablate_naive.py train.h5 --test val.h5 --switches keep_moments,glorot,eps7

Switches: zero_out (output weights and bias start at zero), zero_weights,
zero_bias, keep_moments (the output's Adam moments kept and zero-padded under
one global step count), zero_moments (with keep_moments: the output's moments
zeroed on growth), glorot (Glorot-uniform hidden layer, zero bias), eps7 (Adam
epsilon 1e-7), all_units (every class's output from the start, masked until
seen), reset_all (the whole Adam state reset per task), grow_each (a new output Linear for every task, as
the ``mlp`` head once restarted its output's Adam state; Avalanche makes one only when the largest class
index grows), column_steps (the output's Adam per unit: moments and a step count from when its class is
seen, old units keep theirs; the ``mlp`` head's rule).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_avalanche import load  # noqa: E402

SWITCHES = {"zero_out", "zero_weights", "zero_bias", "keep_moments", "zero_moments", "glorot", "eps7", "all_units",
            "reset_all", "grow_each", "column_steps"}


def run(d: dict[str, np.ndarray], tasks: list[list[int]], on: set[str], epochs: int, seed: int) -> list[float]:
    import torch
    from torch import nn
    torch.manual_seed(seed)
    first = np.isin(d["ytr"], tasks[0])
    mean, std = d["Xtr"][first].mean(0), d["Xtr"][first].std(0)
    inv = 1 / np.where(std > 1e-6, std, 1)
    Xtr, Xte = (torch.tensor((d[k] - mean) * inv, dtype=torch.float32) for k in ("Xtr", "Xte"))
    ytr, n_classes = torch.tensor(d["ytr"]), int(d["ytr"].max()) + 1
    hidden = nn.Linear(Xtr.shape[1], 512)
    if "glorot" in on:
        nn.init.xavier_uniform_(hidden.weight)
        nn.init.zeros_(hidden.bias)
    out, active = nn.Linear(512, 0), torch.zeros(0, dtype=torch.bool)
    opt = torch.optim.Adam(list(hidden.parameters()), lr=1e-3, eps=1e-7 if "eps7" in on else 1e-8)
    after_each, steps = [], 0
    for i, task in enumerate(tasks):
        size = n_classes if "all_units" in on else max(out.out_features, max(task) + 1)
        if size != out.out_features or "grow_each" in on:   # IncrementalClassifier: a new Linear, the old rows copied
            new = nn.Linear(512, size)
            if "zero_out" in on or "zero_weights" in on:
                nn.init.zeros_(new.weight)
            if "zero_out" in on or "zero_bias" in on:
                nn.init.zeros_(new.bias)
            with torch.no_grad():
                new.weight[:out.out_features], new.bias[:out.out_features] = out.weight, out.bias
            old_state = [opt.state.pop(p, None) for p in out.parameters()]
            group = opt.param_groups[0]
            group["params"] = [p for p in group["params"] if all(p is not q for q in out.parameters())]
            group["params"] += list(new.parameters())
            if "keep_moments" in on:
                for p, st in zip(new.parameters(), old_state):
                    m, v = torch.zeros_like(p), torch.zeros_like(p)
                    if st and "zero_moments" not in on:
                        rows = slice(0, st["exp_avg"].shape[0])
                        m[rows], v[rows] = st["exp_avg"], st["exp_avg_sq"]
                    opt.state[p] = {"step": torch.tensor(float(steps)), "exp_avg": m, "exp_avg_sq": v}
            out = new
            active = torch.cat([active, torch.zeros(size - len(active), dtype=torch.bool)])
        if "reset_all" in on:
            opt.state.clear()
        if "column_steps" in on:   # the output's own Adam: moments and a step count per unit, from when it is seen
            group = opt.param_groups[0]
            group["params"] = [p for p in group["params"] if all(p is not q for q in out.parameters())]
            for p in out.parameters():
                opt.state.pop(p, None)
            if i == 0 or col["m"][0].shape[0] != size:
                old = col if i else None
                col = {"m": [torch.zeros_like(out.weight), torch.zeros_like(out.bias)],
                       "v": [torch.zeros_like(out.weight), torch.zeros_like(out.bias)], "t": torch.zeros(size)}
                if old is not None:
                    n = old["t"].shape[0]
                    for key in ("m", "v"):
                        for a, b in zip(col[key], old[key]):
                            a[:n] = b
                    col["t"][:n] = old["t"]
        active[list(task)] = True
        rows = torch.tensor(np.flatnonzero(np.isin(d["ytr"], task)))
        shuffle = torch.Generator().manual_seed(seed * 100 + i)
        for _ in range(epochs):
            order = rows[torch.randperm(len(rows), generator=shuffle)]
            for b in range(0, len(order), 64):
                idx = order[b:b + 64]
                logits = out(torch.relu(hidden(Xtr[idx]))).masked_fill(~active, -1000.0)
                loss = nn.functional.cross_entropy(logits, ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if "column_steps" in on:
                    with torch.no_grad():
                        col["t"] += active.float()
                        t = col["t"].clamp(min=1)
                        rate = 1e-3 * torch.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * active.float()
                        for j, p in enumerate(out.parameters()):
                            g = p.grad
                            col["m"][j].mul_(0.9).add_(0.1 * g)
                            col["v"][j].mul_(0.999).add_(0.001 * g * g)
                            r = rate[:, None] if p.dim() == 2 else rate
                            p -= r * col["m"][j] / (col["v"][j].sqrt() + 1e-8)
                            p.grad = None
                steps += 1
        with torch.no_grad():
            pred = out(torch.relu(hidden(Xte))).masked_fill(~active, -1000.0).argmax(1).numpy()
        seen = np.isin(d["yte"], [c for t in tasks[: i + 1] for c in t])
        after_each.append(float(np.mean(pred[seen] == d["yte"][seen])))
    return after_each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--switches", default="", help="comma-separated, from: " + ", ".join(sorted(SWITCHES)))
    parser.add_argument("--increment", type=int, default=2)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    on = {s for s in args.switches.split(",") if s}
    if on - SWITCHES:
        parser.error(f"unknown switches {sorted(on - SWITCHES)}; expected some of {sorted(SWITCHES)}")
    import torch
    torch.set_num_threads(1)
    from pipeline.train import distinct_orders
    (Xtr, ytr), (Xte, yte) = load(args.train), load(args.test)
    names = sorted(set(ytr))
    index = {c: i for i, c in enumerate(names)}
    d = {"Xtr": Xtr, "ytr": np.array([index[c] for c in ytr]), "Xte": Xte, "yte": np.array([index[c] for c in yte])}
    orders = [[[index[c] for c in t] for t in tasks] for _, tasks in distinct_orders(names, args.increment, args.orders,
                                                                                       seed=args.seed)]
    runs = [run(d, tasks, on, args.epochs, args.seed) for tasks in orders]
    print(f"{','.join(sorted(on)) or 'none':40s} final {100 * np.mean([r[-1] for r in runs]):5.1f}  "
          f"avg incremental {100 * np.mean([np.mean(r) for r in runs]):5.1f}  per order "
          + " ".join(f"{100 * r[-1]:.1f}" for r in runs))


if __name__ == "__main__":
    main()
