"""Ray, and only here: connect to a cluster, and map a function over work items on it.

The rest of the package never imports Ray; it hands this module plain,
picklable module-level functions and classes. Work items name their inputs
(store paths and row ranges, image paths) so that each task opens them itself
and any node can run it; what is shared by every item (a model, an extraction
job) is shipped once with :meth:`WorkerPool.put`, and results (partial heads,
predictions, shard summaries) come back through Ray's object store. This
module holds no executor of its own: :mod:`pipeline.parallel_train` and
:mod:`pipeline.extraction.executors` build theirs on it.

- :func:`ray_session` connects to the cluster named by ``RAY_ADDRESS`` (Ray's
  own convention; ``ray start --head`` makes one) or, when it is unset, starts
  a quiet local Ray (no dashboard, worker logs not forwarded), and shuts down
  only what it started.
- :func:`map_ordered` submits one Ray task per item with ``max_retries`` (a task
  whose worker dies is rerun by Ray, so tasks must be pure or write atomically),
  keeps at most ``max_in_flight`` running, and yields the results in item order
  while a progress bar counts finished tasks.
- :class:`WorkerPool` keeps a fixed set of long-lived actors of a plain class
  (built once, e.g. a backbone), hands each idle one the next item, yields
  results as they arrive, and redoes the item of an actor that dies on a fresh
  actor (so the work must write atomically: extraction shards do).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections import Counter, deque
from typing import Any, Callable, Iterator, Sequence, TypeVar

from tqdm import tqdm

from pipeline.errors import ExecutorError, PipelineError

R = TypeVar("R")
INSTALL_HINT = "pip install 'incremental-pipeline[ray]'"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[dict[str, float]]:
    """Connect to (or start) Ray for the duration of the block; yields the cluster's resources.

    ``address`` defaults to ``RAY_ADDRESS``; with neither, a local Ray is started
    (``num_cpus`` caps it). A Ray already initialised in this process (a test
    session, a notebook) is used as is and left running.
    """
    ray = _ray()
    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "logging_level": "ERROR",
                                  "configure_logging": True}
        if address is None:
            kwargs.update(include_dashboard=False, num_cpus=num_cpus)
            if "RAY_worker_niceness" not in os.environ:
                # Ray starts its workers 15 nice levels below the command that asked for them: on a machine
                # with anything else running they got what was left (imagenette-mini extraction next to one
                # busy process: 1.15-1.3x slower). They run at the command's own priority instead.
                kwargs["_system_config"] = {"worker_niceness": 0}
        else:
            _probe(address)
        # a local Ray gives its raylet a fixed 30 s to register, and raises a bare Exception when a loaded
        # machine takes longer (seen at a load average of 17 on 2 cores): one more try, then a one-line error
        for attempt in range(1 if address else 2):
            try:
                ray.init(**kwargs)
                break
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError, or Ray's bare Exception
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if attempt == 0 and not address and "timed out during startup" in str(exc):
                    continue
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ExecutorError(f"cannot connect to {where}: {first} (start one with `ray start --head`, "
                                    "or unset RAY_ADDRESS to run a local Ray)") from None
        started = True
    try:
        yield dict(ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable ``host:port`` (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", "ray://..." (Ray Client): left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address} (RAY_ADDRESS): {exc}; start one with "
                            "`ray start --head`, or unset RAY_ADDRESS to run a local Ray") from None


def default_workers(resources: dict[str, float]) -> int:
    """One task slot per CPU of the cluster."""
    return max(1, int(resources.get("CPU", 1)))


def actor_shape(resources: dict[str, float], workers: int | None) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for model workers on a cluster with ``resources``.

    Default: one actor per GPU when the cluster has GPUs, else one per two CPUs
    (each actor's model uses several cores, and its decode threads the rest).
    An actor asks for one GPU (a share when ``workers`` exceeds the GPUs) and
    an equal share of the CPUs, which sizes its decode threads.
    """
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    n = workers or (gpus if gpus else max(1, int(cpus) // 2))
    num_gpus = min(1.0, gpus / n) if gpus else 0.0
    return n, max(0.01, round(cpus / n, 2)), num_gpus


class WorkerPool:
    """``size`` long-lived Ray actors of ``cls(*args)``; see the module docstring.

    Use inside a :func:`ray_session`, as a context manager (the actors are killed
    at the end). Each actor reserves ``num_cpus`` / ``num_gpus``, so Ray gives a
    GPU actor its own card (``CUDA_VISIBLE_DEVICES``).
    """

    def __init__(self, cls: type, args: tuple[Any, ...], *, size: int, num_cpus: float = 1, num_gpus: float = 0,
                 max_resubmits: int = 3):
        ray = _ray()
        self._factory = ray.remote(cls).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0,
                                                scheduling_strategy="SPREAD")
        self._args = args
        self.max_resubmits = max_resubmits
        self.actors: list[Any] = [self._factory.remote(*args) for _ in range(size)]
        self.replaced = 0  # actors that died and were replaced (their items redone)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        ray = _ray()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)

    def put(self, value: Any) -> Any:
        """Ship ``value`` to the object store once; pass the reference to many calls."""
        return _ray().put(value)

    def call_all(self, method: str, *args: Any, actors: int | None = None) -> list[Any]:
        """``method(*args)`` on every actor (or the first ``actors``) at once, waited for (e.g. to warm them up)."""
        ray = _ray()
        try:
            return ray.get([getattr(a, method).remote(*args) for a in self.actors[:actors]])
        except ray.exceptions.RayError as exc:
            raise _failure(exc) from None

    def map_unordered(self, method: str, items: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        """``(index, actor.method(*item))`` for every item, as they finish; an item whose actor died is redone."""
        ray = _ray()
        queue, attempts = deque(range(len(items))), Counter[int]()
        idle, running = list(range(len(self.actors))), {}

        def submit() -> None:
            while queue and idle:
                slot, index = idle.pop(), queue.popleft()
                running[getattr(self.actors[slot], method).remote(*items[index])] = (slot, index)

        try:
            submit()
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                slot, index = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # the worker died (killed, node lost, OOM)
                    attempts[index] += 1
                    if attempts[index] > self.max_resubmits:
                        raise ExecutorError(f"item {index} lost its Ray worker {attempts[index]} times; last: "
                                            f"{_cause(exc)}") from None
                    self.actors[slot] = self._factory.remote(*self._args)
                    self.replaced += 1
                    queue.appendleft(index)
                    idle.append(slot)
                    submit()
                    continue
                except ray.exceptions.RayError as exc:
                    raise _failure(exc) from None
                idle.append(slot)
                submit()  # keep the actor busy while the caller handles the result
                yield index, result
        finally:
            for ref in running:  # the actors are killed on __exit__
                with contextlib.suppress(Exception):
                    ray.cancel(ref)


def map_ordered(fn: Callable[..., R], items: Sequence[tuple[Any, ...]], *, max_in_flight: int,
                num_cpus: float = 1, num_gpus: float = 0, max_retries: int = 3, desc: str = "tasks",
                progress: bool = True) -> Iterator[R]:
    """Run ``fn(*item)`` as one Ray task per item; yield the results in item order.

    Needs an active :func:`ray_session`. At most ``max_in_flight`` tasks are
    submitted at a time (``--workers``); Ray places them and retries a task whose
    worker died up to ``max_retries`` times. Results that finish early wait in
    Ray's object store until their turn, so a reducer sees a deterministic order.
    """
    ray = _ray()
    remote = ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
    refs: list[Any] = []
    pending: list[Any] = []
    done: set[Any] = set()
    bar = tqdm(total=len(items), unit="task", desc=desc, disable=not progress, file=sys.stderr)
    next_out = 0
    try:
        while next_out < len(items):
            # bounded: at most max_in_flight running, and as many finished ones waiting their turn
            while (len(refs) < len(items) and len(pending) < max_in_flight
                   and len(refs) - next_out < 2 * max_in_flight):
                ref = remote.remote(*items[len(refs)])
                refs.append(ref)
                pending.append(ref)
            if refs[next_out] not in done:
                finished, pending = ray.wait(pending, num_returns=1)
                done.update(finished)
                bar.update(len(finished))
                continue
            try:
                result = ray.get(refs[next_out])
            except ray.exceptions.RayError as exc:
                raise _failure(exc) from None
            done.discard(refs[next_out])  # no reference left anywhere: Ray frees the object (the set held it
            refs[next_out] = None           # to the end of the map: at M = 10,000 every 800 MB partial stayed)
            next_out += 1
            yield result
            del result  # not held while the next one is fetched (RanPAC's partial heads are 800 MB each)
    finally:
        bar.close()
        for ref in pending:
            ray.cancel(ref, force=True)


def _failure(exc: Exception) -> Exception:
    """The error to raise for a failed Ray call: a user-fixable one (bad store, full disk) as it is."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PipelineError):
        return cause
    return ExecutorError(f"a Ray task failed: {_cause(exc)}")


def _cause(exc: Exception) -> str:
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]
