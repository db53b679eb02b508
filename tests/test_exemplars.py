from __future__ import annotations

import numpy as np

from pipeline.heads.exemplars import ClassPools, ExemplarMemory, ExperienceReplay, herding_order, l2_normalise


def reference_herding(X: np.ndarray, m: int) -> list[int]:
    """A literal transcription of iCaRL's Algorithm 4 (no algebraic shortcuts)."""
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    mu = Z.mean(axis=0)
    chosen: list[int] = []
    for k in range(1, m + 1):
        best, best_d = -1, np.inf
        for i in range(len(Z)):
            if i in chosen:
                continue
            d = np.linalg.norm(mu - (Z[chosen].sum(axis=0) + Z[i]) / k)
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_herding_matches_reference_on_random_data():
    rng = np.random.default_rng(0)
    for trial in range(5):
        X = rng.normal(size=(60, 8)) + rng.normal(size=8)
        assert herding_order(X, 25).tolist() == reference_herding(X, 25)


def test_first_exemplar_is_closest_to_the_class_mean():
    X = np.random.default_rng(1).normal(size=(200, 16)) + 1.0
    Z = l2_normalise(X)
    closest = int(np.argmin(np.linalg.norm(Z - Z.mean(axis=0), axis=1)))
    assert herding_order(X, 1)[0] == closest


def test_shorter_budgets_are_prefixes():
    X = np.random.default_rng(2).normal(size=(120, 10))
    full = herding_order(X).tolist()
    assert sorted(full) == list(range(120))
    for m in (1, 7, 30, 119):
        assert herding_order(X, m).tolist() == full[:m]


def test_memory_budget_never_exceeded_and_sets_shrink_by_prefix():
    rng = np.random.default_rng(3)
    memory = ExemplarMemory(budget=50)
    kept = {}
    for task in range(7):
        label = f"c{task}"
        X = rng.normal(size=(40, 6)) + task
        memory.update({label: (X, [f"{label}/{i}.jpg" for i in range(40)])})
        assert memory.size <= 50
        assert all(len(s.paths) <= 50 // (task + 1) for s in memory.sets.values())
        for c, s in memory.sets.items():
            if c in kept:
                assert s.paths == kept[c][: len(s.paths)]  # Algorithm 5: a prefix of the old set
            kept[c] = list(s.paths)
    assert memory.sets["c0"].paths[0].startswith("c0/")


def test_memory_draws_every_exemplar_once_before_any_twice():
    rng = np.random.default_rng(4)
    memory = ExemplarMemory(budget=30)
    for label in ("a", "b", "c"):
        X = rng.normal(size=(20, 4))
        memory.update({label: (X, [f"{label}/{i}.jpg" for i in range(20)])})
    stored = np.vstack([s.X for s in memory.sets.values()])
    X, labels = memory.sample(2 * len(stored) + 5, np.random.default_rng(0))
    for start in (0, len(stored)):   # each pass over the memory holds every exemplar exactly once
        rows = X[start:start + len(stored)]
        assert sorted(map(tuple, rows)) == sorted(map(tuple, stored))
    assert sorted(labels[:len(stored)].tolist()) == sorted(["a"] * 10 + ["b"] * 10 + ["c"] * 10)


def test_reservoir_pool_is_bounded_exact_when_small_and_seeded():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(500, 3))
    y = np.array(["a"] * 400 + ["b"] * 100, dtype=object)
    pools = ClassPools(size=150, seed=7)
    for s in range(0, 500, 64):
        pools.add(X[s:s + 64], y[s:s + 64], [str(i) for i in range(s, min(s + 64, 500))])
    taken = pools.take()
    assert len(taken["a"][1]) == 150 and len(taken["b"][1]) == 100  # b fits: exact
    assert sorted(map(int, taken["b"][1])) == list(range(400, 500))
    again = ClassPools(size=150, seed=7)
    again.add(X, y, [str(i) for i in range(500)])
    assert again.take()["a"][1] == taken["a"][1]  # chunking does not change the sample


def test_replay_mixes_memory_rows_and_locates_new_rows():
    rng = np.random.default_rng(5)
    replay = ExperienceReplay(budget=20, pool_size=50, seed=0)
    X0, y0 = rng.normal(size=(30, 4)), np.array(["old"] * 30, dtype=object)
    Xm, ym, own = replay.mix(X0, y0, None, (0,))
    assert len(Xm) == 30  # nothing remembered yet
    replay.end_task()
    X1, y1 = rng.normal(size=(10, 4)) + 5, np.array(["new"] * 10, dtype=object)
    Xm, ym, own = replay.mix(X1, y1, None, (1,))
    assert len(Xm) == 20 and (ym == "old").sum() == 10
    np.testing.assert_array_equal(Xm[own], X1)
