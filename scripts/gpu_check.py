"""The GPU check: one command on a lent GPU machine, one JSON and one short table back.

Run from the project root (docs/gpu.md gives the exact device call):

    python3 scripts/gpu_check.py --wheels .whl --photos .gpu_photos --out "$OUT"

1. Installs the carried wheels (``--wheels``) into a temporary folder with
   ``pip install --no-index --no-deps --target``; every child's ``PYTHONPATH``
   is that folder and the checkout, nothing else (the machine has no network
   and no Keras).
2. Builds a source of ``--images`` files (Kaggle layout) as symbolic links to
   the real photos carried in ``--photos``, repeated: the rate is measured over
   seconds. The links share the photos' pages, so the disk is not measured.
3. Runs the variants, most important first, each in its own subprocess (the
   Keras backend is fixed at import) with a time limit, until ``--budget-s``
   (counted from the start, the install included) is spent; variants left over
   are listed in the JSON as skipped:

   - ``decode``: decode + resize img/s with 1 thread, every core but one as
     threads, and as processes (per decoder the project offers);
   - ``backbone``: ``Backbone.embed`` on images already decoded in memory, per
     backbone x backend x precision, for each batch size (keras.applications
     CNNs, and keras-hub ViTs built random-initialised on the fly: ``hub-*``);
   - ``e2e``: ``extract_features`` end to end (list, decode, embed, write,
     merge) at one batch size, decoding in threads or processes;
   - ``gpu_decode``: JPEG decode + resize with ``torchvision.io.decode_jpeg``
     on the GPU (an option, not the pipeline's path; only where torchvision
     imports).

4. Writes ``gpu_check.json`` (every figure, the environment, errors, skips)
   and ``gpu_check.txt`` (the table) to ``--out`` after every measurement, so
   a call cut short still returns what was measured; prints the table last.

``--cpu-smoke`` runs the same machinery small (tiny image count, small input
size, tiny ViTs, short limits) on any machine with the project's environment:
the tests run it, so the script is known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchkit import HUB_RANDOM, cores, cpu_name, decode_rates, make_hub_preset, run_child, timed_rate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT / ".gpu_photos"
SHARED_DVC = ROOT / ".." / "shared" / "data" / "dogs-vs-cats" / "train"
RESERVE_S = 10.0       # kept back for writing the results
MIN_VARIANT_S = 25.0   # a variant is not started with less than this left
CARRY_LIMIT_MIB = 64.0
START = time.perf_counter()  # a child's deadline (--deadline-s) counts from its start


@dataclass
class Variant:
    kind: str                  # decode | backbone | e2e | gpu_decode
    backbone: str = ""
    backend: str = ""
    precision: str = ""
    batch_sizes: tuple[int, ...] = ()
    decode: str = ""           # e2e: threads | processes
    limit_s: float = 90.0
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.kind in ("decode", "gpu_decode"):
            return self.kind
        batches = "/".join(map(str, self.batch_sizes))
        tail = f" {self.decode}" if self.decode else ""
        return f"{self.kind} {self.backbone} {self.backend} {self.precision} b{batches}{tail}"


# ---------------------------------------------------------------- children (one variant each, a JSON line a step)

def emit(out: dict[str, Any]) -> None:
    """What the child has so far, as one JSON line: a time limit past this point still leaves these figures."""
    print(json.dumps(out), flush=True)


def _decoders() -> tuple[str, ...]:
    try:
        from pipeline.images.decode import DECODERS
    except ImportError:  # a checkout from before --decoder
        return ("pil",)
    return tuple(DECODERS)


def child_decode(args: argparse.Namespace) -> dict[str, Any]:
    """img/s of the extraction's decoders over the replicated source, per decoder."""
    from pipeline.images import list_images

    n = len(list_images(args.source).paths)
    workers = max(1, cores() - 1)
    out: dict[str, Any] = {"images": n, "cores": cores(), "workers": workers}
    for decoder in _decoders():
        try:
            listed = list_images(args.source, decoder=decoder) if decoder != "pil" else list_images(args.source)
            out[decoder] = decode_rates(listed, (args.image_size, args.image_size), workers)
        except Exception as exc:  # noqa: BLE001 - a decoder whose package is missing: recorded, not fatal
            out[decoder] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        emit(out)
    return out


def _config(args: argparse.Namespace, backbone: str, precision: str) -> Any:
    from pipeline.backbones import BackboneConfig

    if backbone in HUB_RANDOM:  # built on the fly (random weights) into the run's scratch folder, once
        folder = make_hub_preset(backbone, args.scratch / "presets" / backbone)
        return BackboneConfig(f"hub:{folder}", "none", None, None, "", precision)
    alpha = args.alpha if backbone.startswith("mobilenet") else None
    return BackboneConfig(backbone, "none", alpha, args.image_size, "avg", precision)


def _device_facts() -> dict[str, Any]:
    from pipeline.keras_runtime import backend, device

    facts: dict[str, Any] = {"backend": backend(), "device": device()}
    if facts["backend"] == "jax":
        import jax

        facts["jax_devices"] = [str(d) for d in jax.devices()]
        facts["jax_version"] = jax.__version__
    elif facts["backend"] == "torch":
        import torch

        facts["torch_version"] = torch.__version__
        facts["cuda"] = torch.cuda.is_available()
        if facts["cuda"]:
            facts["cuda_name"] = torch.cuda.get_device_name(0)
    return facts


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]


def child_backbone(args: argparse.Namespace) -> dict[str, Any]:
    """``Backbone.embed`` img/s on decoded images in memory, per batch size (compile time apart); each batch
    size is measured on its own, and none is started past the child's deadline."""
    import numpy as np

    from pipeline.backbones import backbone_for
    from pipeline.images import decode_image, list_images

    t0 = time.perf_counter()
    bb = backbone_for(_config(args, args.backbone, args.precision))
    out: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 2), **_device_facts(),
                           "precision": bb.info["precision"], "feature_dim": bb.info["feature_dim"],
                           "input_size": list(bb.input_size), "batch": {}}
    emit(out)
    listed = list_images(args.source)
    distinct = sorted(set(listed.paths))[:256]
    pool = np.stack([decode_image(listed.root / p, bb.input_size) for p in distinct])
    for b in args.batch_sizes:
        if time.perf_counter() - START > args.deadline_s:
            out["batch"][str(b)] = {"skipped": "out of the variant's time"}
            continue
        try:
            images = pool[np.arange(max(b, 1) * 4) % len(pool)]  # 4 batches per timed call
            t0 = time.perf_counter()
            first = bb.embed(images[:b], b)  # trace / compile
            compile_s = time.perf_counter() - t0
            rate = timed_rate(lambda: bb.embed(images, b), len(images), args.min_seconds)
            t0 = time.perf_counter()
            bb.preprocess(images[:b])  # on the host, in numpy: a ceiling of its own when the device is fast
            host_s = time.perf_counter() - t0
            out["batch"][str(b)] = {"images_per_s": round(rate, 1), "compile_s": round(compile_s, 2),
                                    "host_preprocess_images_per_s": round(b / host_s, 1) if host_s > 0 else None,
                                    "finite": bool(np.isfinite(first).all())}
        except Exception as exc:  # noqa: BLE001 - e.g. out of device memory at the largest batch: the others stand
            out["batch"][str(b)] = {"error": _error(exc)}
        emit(out)
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    return out


def child_e2e(args: argparse.Namespace) -> dict[str, Any]:
    """``extract_features`` over the replicated source, the model built and traced before the clock starts."""
    import numpy as np

    from pipeline.backbones import backbone_for
    from pipeline.extract import extract_features
    from pipeline.extraction import LocalExecutor
    from pipeline.images import decode_image, list_images

    b = args.batch_sizes[0]
    config = _config(args, args.backbone, args.precision)
    bb = backbone_for(config)
    listed = list_images(args.source)
    warm = np.stack([decode_image(listed.root / listed.paths[0], bb.input_size)] * b)
    bb.embed(warm, b)  # the trace at this batch size is not timed
    workers = max(1, cores() - 1)
    done: list[tuple[float, int]] = []  # (when, files) of each partition on disk

    class Timed(LocalExecutor):
        def run(self, job: Any, parts: Any, on_images: Any) -> Any:
            for result in super().run(job, parts, on_images):
                done.append((time.perf_counter(), len(result.part)))
                yield result

    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        # three partitions or more: the first carries the decoders' start-up, the rest are the steady rate
        res = extract_features(listed, Path(tmp) / "check.h5", config, batch_size=b,
                               executor=Timed(workers, args.decode), checkpoint_rows=max(b, len(listed.paths) // 3),
                               progress=False)
    timings = {k: round(v, 2) for k, v in res.timings.items()}
    steady = (sum(n for _, n in done[1:]) / (done[-1][0] - done[0][0])) if len(done) > 1 else None
    return {**_device_facts(), "images": res.rows, "skipped": res.skipped, "workers": workers,
            "images_per_s": round(res.images_per_s, 1), "elapsed_s": round(res.elapsed_s, 2),
            "steady_images_per_s": round(steady, 1) if steady else None, "partitions": len(done), "timings": timings,
            "store_device": res.backbone.get("device"), "store_precision": res.backbone.get("precision"),
            "tensorflow_imported": "tensorflow" in sys.modules}


def child_gpu_decode(args: argparse.Namespace) -> dict[str, Any]:
    """JPEG decode (+ resize to the input size) with ``torchvision.io.decode_jpeg`` on the GPU, batched: an
    option measured against the CPU decoders, not the pipeline's path."""
    try:
        import torch
        import torch.nn.functional as F
        import torchvision
        from torchvision import io as tvio
    except Exception as exc:  # noqa: BLE001 - torchvision absent or not matching torch: recorded, not fatal
        return {"skipped": f"torchvision does not import here: {_error(exc)}"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    files = sorted(p for p in Path(args.source).iterdir())[:512]
    data = [tvio.read_file(str(p)) for p in files]
    size = (args.image_size, args.image_size)
    out: dict[str, Any] = {"device": device, "torchvision": torchvision.__version__, "images": len(data), "batch": {}}

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for b in args.batch_sizes:
        if time.perf_counter() - START > args.deadline_s:
            out["batch"][str(b)] = {"skipped": "out of the variant's time"}
            continue
        batches = [data[i:i + b] for i in range(0, len(data), b)]
        try:
            def decode() -> list[Any]:
                got = []
                for batch in batches:
                    got += tvio.decode_jpeg(batch, mode=tvio.ImageReadMode.RGB, device=device)
                sync()
                return got

            def decode_resize() -> None:
                for img in decode():
                    F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
                sync()

            decode_resize()  # warm: the decoder's state, kernels
            out["batch"][str(b)] = {
                "decode_images_per_s": round(timed_rate(decode, len(data), args.min_seconds), 1),
                "decode_resize_images_per_s": round(timed_rate(decode_resize, len(data), args.min_seconds), 1)}
        except Exception as exc:  # noqa: BLE001 - e.g. a JPEG the GPU decoder refuses: recorded
            out["batch"][str(b)] = {"error": _error(exc)}
        emit(out)
    return out


CHILDREN = {"decode": child_decode, "backbone": child_backbone, "e2e": child_e2e, "gpu_decode": child_gpu_decode}


# ---------------------------------------------------------------- preparing here: photos, the carry budget

def copy_photos(src: Path, dest: Path, count: int) -> None:
    """Copy ``count`` photos (half cats, half dogs, by name order) from ``src`` to ``dest`` (copies: links do
    not travel to the device machine)."""
    if not src.is_dir():
        raise SystemExit(f"{src} is not a folder of photos (../shared/data/dogs-vs-cats/train?)")
    dest.mkdir(parents=True, exist_ok=True)
    picked: list[Path] = []
    for cls in ("cat", "dog"):
        names = sorted(src.glob(f"{cls}.*.jpg"), key=lambda p: int(p.name.split(".")[1]))
        picked += names[: count // 2 if cls == "cat" else count - count // 2]
    for p in picked:
        if not (dest / p.name).exists():
            shutil.copyfile(p, dest / p.name)
    size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
    print(f"{len(list(dest.iterdir()))} photos in {dest} ({size:.1f} MiB)")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def wheel_kind(name: str) -> str:
    """``pure`` (any Python) or the Python a compiled wheel is built for, from its file name's tags."""
    parts = name[:-len(".whl")].split("-")
    if len(parts) < 5:
        return "not a wheel's name"
    python, abi = parts[-3], parts[-2]
    return "pure" if abi == "none" and parts[-1] == "any" else f"compiled for {python}"


def carry_size(carried: list[Path]) -> int:
    """Print what one device call would carry (tracked and untracked-not-ignored files, plus ``carried``)
    against its 64 MiB, and which carried wheels are pure or built for one Python; 1 when over."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((ROOT / os.fsdecode(name)).stat().st_size for name in listed
               if name and (ROOT / os.fsdecode(name)).is_file())
    rows = [("working tree (tracked + untracked, not ignored)", tree)]
    rows += [(f"carry {p}" + ("" if p.exists() else " (absent)"), _size(p) if p.exists() else 0) for p in carried]
    total = sum(n for _, n in rows)
    for label, n in rows:
        print(f"{n / 2**20:8.1f} MiB  {label}")
    for p in carried:
        for w in sorted(p.glob("*.whl")) if p.is_dir() else []:
            print(f"          {w.stat().st_size / 2**20:5.1f} MiB  {w.name.split('-')[0]}: {wheel_kind(w.name)}")
    verdict = "fits" if total / 2**20 <= CARRY_LIMIT_MIB else "DOES NOT FIT"
    print(f"{total / 2**20:8.1f} MiB  in all: {verdict} in the {CARRY_LIMIT_MIB:.0f} MiB one device call carries")
    return 0 if total / 2**20 <= CARRY_LIMIT_MIB else 1


# ---------------------------------------------------------------- parent: wheels, photos, plan, run, report

def install_wheels(wheels: Path, site: Path) -> dict[str, Any]:
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        return {"wheels": [], "note": f"no wheels in {wheels}: the installed environment is used"}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, found)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"installing the wheels failed:\n{proc.stderr[-3000:]}")
    return {"wheels": [w.name for w in found], "kinds": {w.name: wheel_kind(w.name) for w in found},
            "site": str(site), "install_s": round(time.perf_counter() - t0, 1)}


def replicate_photos(photos: Path, dest: Path, n: int) -> dict[str, Any]:
    """``n`` links ``cat.<i>.jpg`` / ``dog.<i>.jpg`` to the photos, repeated in order."""
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file()) \
        if photos.is_dir() else []
    if not files:
        raise SystemExit(f"no photos (*.jpg) in {photos}: run `make gpu-photos` first (docs/gpu.md)")
    dest.mkdir(parents=True)
    counts = {"cat": 0, "dog": 0}
    for i in range(n):
        src = files[i % len(files)]
        cls = "dog" if src.name.startswith("dog") else "cat"
        (dest / f"{cls}.{counts[cls]}.jpg").symlink_to(src.resolve())
        counts[cls] += 1
    return {"distinct_photos": len(files), "images": n, "photos_mib": round(sum(f.stat().st_size for f in files) / 2**20, 1)}


def plan(args: argparse.Namespace) -> list[Variant]:
    """Variants, most important first: what the issue's targets need comes before the sweeps."""
    main_prec, main_batch = args.precisions[0], args.batch_sizes[len(args.batch_sizes) // 2]
    cap = args.variant_limit_s
    out = [Variant("decode", limit_s=cap)]
    for bb in args.backbones:  # the CNNs: every batch size alone, then end to end, per backend
        for backend in args.backends:
            out.append(Variant("backbone", bb, backend, main_prec, tuple(args.batch_sizes), limit_s=cap))
            out.append(Variant("e2e", bb, backend, main_prec, (main_batch,), args.decode_modes[0], limit_s=cap))
    if args.gpu_decode:  # seconds: before the ViTs, or it would rarely be reached
        out.append(Variant("gpu_decode", batch_sizes=(64, 256), limit_s=min(cap, 60.0)))
    for i, hub in enumerate(args.hub):  # the ViTs: alone at the middle batch size; the first also end to end
        for backend in args.backends:
            out.append(Variant("backbone", hub, backend, main_prec, (main_batch,), limit_s=cap))
            if i == 0:
                out.append(Variant("e2e", hub, backend, main_prec, (main_batch,), args.decode_modes[0], limit_s=cap))
    for backend in args.backends:  # the other precisions, backbone alone, middle batch size
        for prec in args.precisions[1:]:
            for bb in args.backbones:
                out.append(Variant("backbone", bb, backend, prec, (main_batch,), limit_s=cap))
    for mode in args.decode_modes[1:]:  # threads against processes
        for backend in args.backends:
            for bb in args.backbones:
                out.append(Variant("e2e", bb, backend, main_prec, (main_batch,), mode, limit_s=cap))
    return out


def child_command(v: Variant, args: argparse.Namespace, limit: float) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", v.kind, "--source", str(args.source),
           "--image-size", str(args.image_size), "--alpha", str(args.alpha), "--min-seconds", str(args.min_seconds),
           "--scratch", str(args.scratch), "--deadline-s", str(round(max(1.0, limit - 15.0), 1))]
    if v.backbone:
        cmd += ["--backbone", v.backbone, "--precision", v.precision]
    if v.batch_sizes:
        cmd += ["--batch-sizes", ",".join(map(str, v.batch_sizes))]
    if v.decode:
        cmd += ["--decode", v.decode]
    return cmd


def child_env(args: argparse.Namespace, site: Path | None) -> dict[str, str]:
    """The children's environment: ``PYTHONPATH`` is the wheels' folder and the checkout, nothing else."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
                "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false"),
                "PYTHONPATH": os.pathsep.join(([str(site)] if site else []) + [str(ROOT)])})
    if args.cpu_smoke:  # a shared CPU: OpenMP threads spinning against other jobs made torch 13x slower here
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def environment(env: dict[str, str], backend: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "cores": cores(),
                             "cpu": cpu_name()}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,utilization.gpu",
                            "--format=csv,noheader"], capture_output=True, text=True)
        facts["gpus"] = q.stdout.strip().splitlines() or q.stderr.strip()
    code = ("import json, importlib.metadata as m, importlib.util as u\nout = {}\n"
            "for n in ('keras', 'keras-hub', 'jax', 'jaxlib', 'torch', 'torchvision', 'numpy', 'pillow', 'h5py', "
            "'river', 'simplejpeg', 'opencv-python-headless', 'ray', 'tensorflow'):\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: pass\n"
            "print(json.dumps({'packages': out, 'tensorflow_importable': u.find_spec('tensorflow') is not None}))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    facts.update(json.loads(proc.stdout) if proc.returncode == 0 else {"packages": proc.stderr[-500:]})
    where = subprocess.run([sys.executable, "-c", "import keras, sys; print(keras.__file__); "
                            "print('tensorflow' in sys.modules)"], env={**env, "KERAS_BACKEND": backend},
                           capture_output=True, text=True)
    if where.returncode == 0:
        keras_file, tf_loaded = where.stdout.split()
        facts["keras_from"], facts["keras_imported_tensorflow"] = keras_file, tf_loaded == "True"
    else:
        facts["keras_from"] = f"keras does not import: {where.stderr.strip().splitlines()[-1:]}"
    return facts


def _rate(x: Any) -> str:
    return f"{x:.0f}" if isinstance(x, (int, float)) else "error"


def table(variants: list[Variant], skipped: list[str], elapsed: float | None = None) -> str:
    rows = ["variant                                             img/s      notes"]
    raw: dict[tuple[str, str, str], float] = {}
    for v in variants:
        r = v.result
        if not r:
            continue
        if "error" in r:
            rows.append(f"{v.name:<50} {'-':>8}      error: {r['error'][:90]}")
        if v.kind == "decode":
            for dec, rates in r.items():
                if isinstance(rates, dict):
                    text = (", ".join(f"{k} {_rate(val)}" for k, val in rates.items()) if "error" not in rates
                            else rates["error"][:90])
                    rows.append(f"{'decode ' + dec:<50} {'':>8}      {text}")
        elif v.kind == "gpu_decode":
            if "skipped" in r:
                rows.append(f"{v.name:<50} {'-':>8}      {r['skipped'][:90]}")
            for b, m in r.get("batch", {}).items():
                note = m.get("error") or m.get("skipped") or f"decode only {_rate(m.get('decode_images_per_s'))}"
                rows.append(f"{f'gpu_decode torchvision b{b}':<50} {_rate(m.get('decode_resize_images_per_s')):>8}"
                            f"      {r['device']}, {note[:90]}")
        elif v.kind == "backbone":
            for b, m in r.get("batch", {}).items():
                name = f"backbone {v.backbone} {v.backend} {v.precision} b{b}"
                if "images_per_s" not in m:
                    rows.append(f"{name:<50} {'-':>8}      {(m.get('error') or m.get('skipped', ''))[:90]}")
                    continue
                key = (v.backbone, v.backend, v.precision)
                raw[key] = max(raw.get(key, 0), m["images_per_s"])
                host = m["host_preprocess_images_per_s"]
                rows.append(f"{name:<50} {m['images_per_s']:>8.0f}      {r.get('device')}, compile {m['compile_s']} s, "
                            f"host preprocess {_rate(host)} img/s")
        elif "images_per_s" in r:
            base = raw.get((v.backbone, v.backend, v.precision))
            steady = r.get("steady_images_per_s")
            ratio = f", steady {steady / base:.2f}x backbone" if base and steady else ""
            t = r["timings"]
            rows.append(f"{v.name:<50} {r['images_per_s']:>8.0f}      {r['device']}, steady "
                        f"{steady if steady else '-'} img/s{ratio}, decode wait {t.get('decode_wait_s', 0)} s, "
                        f"embed {t.get('embed_s', 0)} s")
    if skipped:
        rows.append(f"skipped (out of time): {len(skipped)}: " + "; ".join(skipped))
    if elapsed is not None:
        rows.append(f"elapsed {elapsed:.0f} s")
    return "\n".join(rows)


class Report:
    """The JSON and the table, rewritten in ``out`` after every measurement (a cut-short call keeps them)."""

    def __init__(self, out: Path, head: dict[str, Any], start: float):
        self.out, self.head, self.start = out, head, start
        self.variants: list[Variant] = []
        self.skipped: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def save(self, final: bool = False) -> str:
        elapsed = round(time.perf_counter() - self.start, 1)
        data = {**self.head, "variants": [{**asdict(v), "name": v.name} for v in self.variants if v.result],
                "skipped_out_of_time": self.skipped, "elapsed_s": elapsed, "complete": final}
        text = table(self.variants, self.skipped, elapsed)
        for name, body in (("gpu_check.json", json.dumps(data, indent=1)), ("gpu_check.txt", text + "\n")):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(body)
            tmp.replace(self.out / name)
        return text


def _csv(text: str, kind: type = str) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="carried wheels to install first (if any)")
    ap.add_argument("--photos", type=Path, default=None, help=f"folder of real JPEGs (default {DEFAULT_PHOTOS.name}, "
                    "else ../shared's Dogs vs Cats)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    ap.add_argument("--images", type=int, default=12288, help="files in the replicated source")
    ap.add_argument("--backbones", type=lambda s: _csv(s), default=["resnet50", "mobilenetv2"])
    ap.add_argument("--hub", type=lambda s: _csv(s), default=["hub-vit-b16", "hub-dinov2-s14"],
                    help=f"keras-hub ViTs built random-initialised on the fly, of: {', '.join(HUB_RANDOM)} "
                    "(none: '')")
    ap.add_argument("--backends", type=lambda s: _csv(s), default=["jax", "torch"])
    ap.add_argument("--precisions", type=lambda s: _csv(s), default=["float16", "bfloat16", "float32"],
                    help="the first is the one measured end to end")
    ap.add_argument("--batch-sizes", type=lambda s: _csv(s, int), default=[64, 256, 512])
    ap.add_argument("--decode-modes", type=lambda s: _csv(s), default=["processes", "threads"],
                    help="end to end, decoders as; the first with every backbone and backend")
    ap.add_argument("--no-gpu-decode", dest="gpu_decode", action="store_false",
                    help="leave out torchvision's GPU JPEG decode")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--alpha", type=float, default=1.0, help="MobileNet width")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="time each measurement at least this")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="the whole check, install included (the device call gets 540 s)")
    ap.add_argument("--variant-limit-s", type=float, default=120.0)
    ap.add_argument("--cpu-smoke", action="store_true", help="the same machinery, small: for a CPU machine and tests")
    ap.add_argument("--carry-size", nargs="*", type=Path, default=None, metavar="PATH",
                    help="only print what a device call carries (the tree and these paths) against 64 MiB")
    ap.add_argument("--copy-photos", nargs=3, default=None, metavar=("SRC", "DEST", "COUNT"),
                    help="only copy COUNT photos of SRC (Kaggle layout) into DEST")
    # child-only
    ap.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--backbone", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--decode", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline-s", type=float, default=1e9, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        smoke = {"--images": ("images", 48), "--backbones": ("backbones", ["mobilenetv2"]),
                 "--hub": ("hub", ["hub-vit-tiny"]),
                 "--backends": ("backends", ["jax"]), "--precisions": ("precisions", ["float32", "bfloat16"]),
                 "--batch-sizes": ("batch_sizes", [8, 16]), "--image-size": ("image_size", 64),
                 "--alpha": ("alpha", 0.35), "--min-seconds": ("min_seconds", 0.2),
                 "--budget-s": ("budget_s", 420.0), "--variant-limit-s": ("variant_limit_s", 200.0)}
        for flag, (dest, value) in smoke.items():
            if flag not in given:
                setattr(args, dest, value)
    unknown = [h for h in args.hub if h not in HUB_RANDOM]
    if unknown:
        ap.error(f"--hub {','.join(unknown)}: expected names of {', '.join(HUB_RANDOM)}")
    return args


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse(argv)
    if args.carry_size is not None:
        return carry_size(args.carry_size)
    if args.copy_photos:
        copy_photos(Path(args.copy_photos[0]), Path(args.copy_photos[1]), int(args.copy_photos[2]))
        return 0
    if args.child:
        sys.path.insert(0, str(ROOT))
        emit(CHILDREN[args.child](args))
        return 0
    photos = args.photos or (DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else SHARED_DVC)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        report = Report(args.out, {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                   "cpu_smoke": args.cpu_smoke, "budget_s": args.budget_s}, start)
        report.head["wheels"] = install_wheels(args.wheels, work / "site")
        env = child_env(args, work / "site" if report.head["wheels"]["wheels"] else None)
        report.head["pythonpath"] = env["PYTHONPATH"]
        report.head["omp_num_threads"] = env.get("OMP_NUM_THREADS")
        report.head["photos"] = {"folder": str(photos), **replicate_photos(photos, work / "src", args.images)}
        args.source, args.scratch = work / "src", work
        report.head["environment"] = environment(env, args.backends[0] if args.backends else "jax")
        print(f"environment: {json.dumps(report.head['environment'])}", flush=True)
        report.variants = plan(args)
        report.save()
        for v in report.variants:
            left = args.budget_s - (time.perf_counter() - start) - RESERVE_S
            if left < min(MIN_VARIANT_S, v.limit_s):
                report.skipped.append(v.name)
                continue
            limit = min(v.limit_s, left)

            def partial(line: dict[str, Any], v: Variant = v) -> None:
                v.result = line
                report.save()

            v.result = run_child(child_command(v, args, limit), {**env, **({"KERAS_BACKEND": v.backend} if v.backend
                                                                           else {})}, limit, partial, cwd=ROOT)
            report.save()
            print(f"{v.name}: {json.dumps(v.result)}", flush=True)
        text = report.save(final=True)
        print(f"\n{text}\nresults in {args.out}/gpu_check.json", flush=True)
    done = [v for v in report.variants if v.result]
    errors = [v for v in done if "error" in v.result]
    return 1 if errors and len(errors) == len(done) else 0


if __name__ == "__main__":
    sys.exit(main())
