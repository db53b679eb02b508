"""What the measuring scripts share: one measurement per child process (JSON lines back), timed loops, the
decoders' rates, the CPU's name, random-initialised keras-hub presets.

Used by ``gpu_check.py``, ``bench_extract.py`` and ``bench_decoder.py`` (each puts this folder on
``sys.path`` by being run from it).
"""

from __future__ import annotations

import json
import os
import platform
import queue
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def timed_rate(call: Callable[[], Any], items_per_call: int, min_seconds: float, min_calls: int = 2) -> float:
    """Items per second of ``call``, repeated at least ``min_calls`` times and for at least ``min_seconds``."""
    calls, t0 = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        dt = time.perf_counter() - t0
        if calls >= min_calls and dt >= min_seconds:
            return calls * items_per_call / dt


def run_child(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None,
              on_json: Callable[[dict[str, Any]], None] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Run one measurement in a child process; its result is the last JSON line it printed.

    Each JSON line is handed to ``on_json`` as it comes (a child prints what it has after each
    measurement, so a time limit still leaves figures). Past ``timeout`` the child and its own children
    are killed; the result is then the last line with ``error``. ``wall_s`` is always added.
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        last: dict[str, Any] = {}
        error = ""
        while True:
            left = None if timeout is None else timeout - (time.perf_counter() - t0)
            if left is not None and left <= 0:
                error = f"timed out after {timeout:.0f} s"
                break
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("{"):
                try:
                    last = json.loads(line)
                except ValueError:
                    continue
                if on_json is not None:
                    on_json({**last, "wall_s": round(time.perf_counter() - t0, 1)})
        if error:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = proc.wait()
        if not error and (code != 0 or not last):
            err.seek(0)
            tail = [ln for ln in err.read().strip().splitlines() if ln.strip()][-3:]
            error = " | ".join(tail) or f"exit {code}"
    return {**last, **({"error": error} if error else {}), "wall_s": round(time.perf_counter() - t0, 1)}


def decode_rates(listed: Any, size: tuple[int, int], workers: int, batch: int = 32,
                 one_thread_images: int = 512) -> dict[str, Any]:
    """img/s of the extraction's decoders over ``listed``: one thread, ``workers`` threads, ``workers``
    processes. Start-up (spawn, imports, first calls) is not timed; each mode is measured on its own
    (an error in one is recorded under its name)."""
    from pipeline.extraction.decoding import decoded_batches

    n = len(listed.paths)
    warm = [list(range(min(n, 2 * workers)))]
    one = [list(range(i, min(i + batch, n))) for i in range(0, min(n, one_thread_images), batch)]
    every = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
    rates: dict[str, Any] = {}
    for label, batches, w, processes in (("1_thread", one, 1, False), (f"{workers}_threads", every, workers, False),
                                         (f"{workers}_processes", every, workers, True)):
        try:
            with decoded_batches(listed, warm + batches, size, w, processes) as reader:
                first = next(reader)
                t0 = time.perf_counter()
                decoded = [a for b in reader for a in b]
                dt = time.perf_counter() - t0
            bad = [a for a in first + decoded if isinstance(a, str)]
            if bad:
                raise RuntimeError(f"{len(bad)} photos not decoded: {bad[0]}")
            rates[label] = round(len(decoded) / dt, 1)
        except Exception as exc:  # noqa: BLE001 - one mode failing leaves the others' figures
            rates[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if isinstance(rates.get(f"{workers}_processes"), float):
        rates["per_core_processes"] = round(rates[f"{workers}_processes"] / workers, 1)
    return rates


# keras-hub transformers with random weights, saved as preset folders: nothing is downloaded, and the speed
# does not depend on the weights. name -> (keras-hub class, its arguments, image converter class)
HUB_RANDOM: dict[str, tuple[str, dict[str, Any], str]] = {
    "hub-dinov2-s14": ("DINOV2Backbone", dict(patch_size=14, num_layers=12, hidden_dim=384, num_heads=6,
                                              intermediate_dim=1536, image_shape=(224, 224, 3)),
                       "DINOV2ImageConverter"),
    "hub-vit-b16": ("ViTBackbone", dict(patch_size=16, num_layers=12, hidden_dim=768, num_heads=12, mlp_dim=3072,
                                        image_shape=(224, 224, 3)), "ViTImageConverter"),
    # tiny (2 layers, width 32, as the tests build them): the same code path in seconds on a CPU
    "hub-dinov2-tiny": ("DINOV2Backbone", dict(patch_size=14, num_layers=2, hidden_dim=32, num_heads=2,
                                               intermediate_dim=64, image_shape=(56, 56, 3)), "DINOV2ImageConverter"),
    "hub-vit-tiny": ("ViTBackbone", dict(patch_size=14, num_layers=2, hidden_dim=32, num_heads=2, mlp_dim=64,
                                         image_shape=(56, 56, 3)), "ViTImageConverter"),
}


def make_hub_preset(name: str, folder: Path) -> Path:
    """Save a random-initialised keras-hub backbone ``name`` (of ``HUB_RANDOM``) and its image converter as a
    preset folder; returns the folder (made once)."""
    if (folder / "config.json").is_file():
        return folder
    import keras_hub as kh

    class_name, kwargs, converter = HUB_RANDOM[name]
    size = kwargs["image_shape"][:2]
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")  # whole or absent: a child killed mid-save leaves no half
    getattr(kh.models, class_name)(**kwargs).save_to_preset(str(tmp))
    getattr(kh.layers, converter)(image_size=size, scale=1 / 127.5, offset=-1.0).save_to_preset(str(tmp))
    tmp.rename(folder)
    return folder
