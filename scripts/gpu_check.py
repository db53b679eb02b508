"""The GPU check: one command on a lent GPU machine, one JSON and one short table back.

Run from the project root (docs/gpu.md gives the exact device call):

    python3 scripts/gpu_check.py --wheels .whl --photos .gpu_photos --out "$OUT"

1. Installs the carried wheels (``--wheels``) into a temporary folder with
   ``pip install --no-index --no-deps --target`` and puts it first on every
   child's ``PYTHONPATH`` (the machine has no network and no Keras).
2. Builds a source of ``--images`` files (Kaggle layout) as symbolic links to
   the real photos carried in ``--photos``, repeated: the rate is measured over
   seconds. The links share the photos' pages, so the disk is not measured.
3. Runs the variants, most important first, each in its own subprocess (the
   Keras backend is fixed at import) with a time limit, until ``--budget-s``
   is spent; variants left over are listed in the JSON as skipped:

   - ``decode``: decode + resize img/s with 1 thread, every core but one as
     threads, and as processes (per decoder the project offers);
   - ``backbone``: ``Backbone.embed`` on images already decoded in memory, per
     backbone x backend x precision, for each batch size;
   - ``e2e``: ``extract_features`` end to end (list, decode, embed, write,
     merge) at one batch size, decoding in threads or processes.

4. Writes ``gpu_check.json`` (every figure, the environment, errors, skips)
   and ``gpu_check.txt`` (the table, also printed last) to ``--out``.

``--cpu-smoke`` runs the same machinery small (tiny image count, small input
size, short limits) on any machine with the project's environment: the test
suite runs it, so the script is known to work before a GPU is lent.
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT / ".gpu_photos"
SHARED_DVC = ROOT / ".." / "shared" / "data" / "dogs-vs-cats" / "train"
RESERVE_S = 10.0       # kept back for writing the results
MIN_VARIANT_S = 25.0   # a variant is not started with less than this left


@dataclass
class Variant:
    kind: str                  # decode | backbone | e2e
    backbone: str = ""
    backend: str = ""
    precision: str = ""
    batch_sizes: tuple[int, ...] = ()
    decode: str = ""           # e2e: threads | processes
    limit_s: float = 90.0
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.kind == "decode":
            return "decode"
        batches = "/".join(map(str, self.batch_sizes))
        tail = f" {self.decode}" if self.decode else ""
        return f"{self.kind} {self.backbone} {self.backend} {self.precision} b{batches}{tail}"


# ---------------------------------------------------------------- children (one measurement each)

def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _decoders() -> tuple[str, ...]:
    try:
        from pipeline.images.decode import DECODERS
    except ImportError:  # a checkout from before --decoder
        return ("pil",)
    return tuple(DECODERS)


def child_decode(args: argparse.Namespace) -> dict[str, Any]:
    """img/s of the extraction's decoders over the replicated source."""
    from pipeline.extraction.decoding import decoded_batches
    from pipeline.images import list_images

    listed = list_images(args.source)
    n = len(listed.paths)
    size = (args.image_size, args.image_size)
    workers = max(1, _cores() - 1)
    out: dict[str, Any] = {"images": n, "cores": _cores(), "workers": workers}
    for decoder in _decoders():
        try:
            listed = list_images(args.source, decoder=decoder) if decoder != "pil" else list_images(args.source)
        except Exception as exc:  # noqa: BLE001 - a decoder whose package is missing: recorded, not fatal
            out[decoder] = {"error": str(exc)}
            continue
        rates: dict[str, float] = {}
        warm = [list(range(min(n, 2 * workers)))]  # start-up (spawn, imports, first calls) is not timed
        one = [list(range(i, min(i + 32, n))) for i in range(0, min(n, 512), 32)]
        every = [list(range(i, min(i + 32, n))) for i in range(0, n, 32)]
        for label, batches, w, processes in (("1_thread", one, 1, False), (f"{workers}_threads", every, workers, False),
                                             (f"{workers}_processes", every, workers, True)):
            with decoded_batches(listed, warm + batches, size, w, processes) as reader:
                first = next(reader)
                t0 = time.perf_counter()
                decoded = [a for b in reader for a in b]
                dt = time.perf_counter() - t0
            bad = [a for a in first + decoded if isinstance(a, str)]
            if bad:
                raise RuntimeError(f"{len(bad)} photos not decoded by {decoder}: {bad[0]}")
            rates[label] = round(len(decoded) / dt, 1)
        rates["per_core_processes"] = round(rates[f"{workers}_processes"] / workers, 1)
        out[decoder] = rates
    return out


def _config(args: argparse.Namespace, backbone: str, precision: str) -> Any:
    from pipeline.backbones import BackboneConfig

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


def child_backbone(args: argparse.Namespace) -> dict[str, Any]:
    """``Backbone.embed`` img/s on decoded images in memory, per batch size (compile time apart)."""
    import numpy as np

    from pipeline.backbones import backbone_for
    from pipeline.images import decode_image, list_images

    t0 = time.perf_counter()
    bb = backbone_for(_config(args, args.backbone, args.precision))
    out: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 2), **_device_facts(),
                           "precision": bb.info["precision"], "feature_dim": bb.info["feature_dim"], "batch": {}}
    listed = list_images(args.source)
    distinct = sorted({p for p in listed.paths})[:256]
    pool = np.stack([decode_image(listed.root / p, bb.input_size) for p in distinct])
    for b in args.batch_sizes:
        images = pool[np.arange(max(b, 1) * 4) % len(pool)]  # 4 batches per timed call
        t0 = time.perf_counter()
        first = bb.embed(images[:b], b)  # trace / compile
        compile_s = time.perf_counter() - t0
        calls, t0 = 0, time.perf_counter()
        while True:  # at least 2 calls, then until min_seconds
            bb.embed(images, b)
            calls += 1
            dt = time.perf_counter() - t0
            if calls >= 2 and dt >= args.min_seconds:
                break
        t0 = time.perf_counter()
        bb.preprocess(images[:b])  # on the host, in numpy: a ceiling of its own when the device is fast
        host_s = time.perf_counter() - t0
        out["batch"][str(b)] = {"images_per_s": round(calls * len(images) / dt, 1), "compile_s": round(compile_s, 2),
                                "host_preprocess_images_per_s": round(b / host_s, 1) if host_s > 0 else None,
                                "finite": bool(np.isfinite(first).all())}
        print(json.dumps({**out, "partial": True}), flush=True)  # what a time limit leaves is still reported
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
    workers = max(1, _cores() - 1)
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
            "store_device": res.backbone.get("device"), "store_precision": res.backbone.get("precision")}


CHILDREN = {"decode": child_decode, "backbone": child_backbone, "e2e": child_e2e}
CARRY_LIMIT_MIB = 64.0


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


def carry_size(carried: list[Path]) -> int:
    """Print what one device call would carry (tracked and untracked-not-ignored files, plus ``carried``)
    against its 64 MiB; 1 when over."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((ROOT / os.fsdecode(name)).stat().st_size for name in listed
               if name and (ROOT / os.fsdecode(name)).is_file())
    rows = [("working tree (tracked + untracked, not ignored)", tree)]
    rows += [(f"carry {p}" + ("" if p.exists() else " (absent)"), _size(p) if p.exists() else 0) for p in carried]
    total = sum(n for _, n in rows)
    for label, n in rows:
        print(f"{n / 2**20:8.1f} MiB  {label}")
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
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"installing the wheels failed:\n{proc.stderr[-3000:]}")
    return {"wheels": [w.name for w in found], "site": str(site)}


def replicate_photos(photos: Path, dest: Path, n: int) -> dict[str, Any]:
    """``n`` links ``cat.<i>.jpg`` / ``dog.<i>.jpg`` to the photos, repeated in order."""
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
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
    for backend in args.backends:
        for bb in args.backbones:
            out.append(Variant("backbone", bb, backend, main_prec, tuple(args.batch_sizes), limit_s=cap))
            out.append(Variant("e2e", bb, backend, main_prec, (main_batch,), args.decode_modes[0], limit_s=cap))
    for backend in args.backends:  # the other precisions, backbone alone, middle batch size
        for prec in args.precisions[1:]:
            for bb in args.backbones:
                out.append(Variant("backbone", bb, backend, prec, (main_batch,), limit_s=cap))
    for mode in args.decode_modes[1:]:  # threads against processes
        for backend in args.backends:
            for bb in args.backbones:
                out.append(Variant("e2e", bb, backend, main_prec, (main_batch,), mode, limit_s=cap))
    return out


def run_variant(v: Variant, args: argparse.Namespace, env: dict[str, str], limit: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", v.kind, "--source", str(args.source),
           "--image-size", str(args.image_size), "--alpha", str(args.alpha), "--min-seconds", str(args.min_seconds),
           "--scratch", str(args.scratch)]
    if v.kind != "decode":
        cmd += ["--backbone", v.backbone, "--precision", v.precision,
                "--batch-sizes", ",".join(map(str, v.batch_sizes))]
    if v.decode:
        cmd += ["--decode", v.decode]
    child_env = {**env, **({"KERAS_BACKEND": v.backend} if v.backend else {})}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        printed = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        partial = [ln for ln in printed.splitlines() if ln.startswith("{")]
        return {**(json.loads(partial[-1]) if partial else {}), "error": f"timed out after {limit:.0f} s",
                "wall_s": round(time.perf_counter() - t0, 1)}
    wall = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}", "wall_s": wall}
    return {**json.loads(lines[-1]), "wall_s": wall}


def environment(env: dict[str, str], backend: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "cores": _cores(),
                             "cpu": _cpu_name()}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,utilization.gpu",
                            "--format=csv,noheader"], capture_output=True, text=True)
        facts["gpus"] = q.stdout.strip().splitlines() or q.stderr.strip()
    code = ("import json, importlib.metadata as m\nout = {}\n"
            "for n in ('keras', 'jax', 'jaxlib', 'torch', 'numpy', 'pillow', 'h5py', 'river', 'simplejpeg', "
            "'keras-hub', 'ray'):\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    facts["packages"] = json.loads(proc.stdout) if proc.returncode == 0 else proc.stderr[-500:]
    where = subprocess.run([sys.executable, "-c", "import keras, sys; print(keras.__file__); "
                            "print('tensorflow' in sys.modules)"], env={**env, "KERAS_BACKEND": backend},
                           capture_output=True, text=True)
    if where.returncode == 0:
        keras_file, tf_loaded = where.stdout.split()
        facts["keras_from"], facts["keras_imported_tensorflow"] = keras_file, tf_loaded == "True"
    return facts


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(variants: list[Variant], skipped: list[str]) -> str:
    rows = ["variant                                             img/s      notes"]
    raw: dict[tuple[str, str, str], float] = {}
    for v in variants:
        r = v.result
        if not r:
            continue
        if "error" in r:
            rows.append(f"{v.name:<50} {'-':>8}      error: {r['error'][:90]}")
            if v.kind != "backbone" or not r.get("batch"):
                continue
        if v.kind == "decode":
            for dec, rates in r.items():
                if isinstance(rates, dict):
                    text = ", ".join(f"{k} {val:.0f}" for k, val in rates.items()) if "error" not in rates else rates["error"]
                    rows.append(f"{'decode ' + dec:<50} {'':>8}      {text}")
        elif v.kind == "backbone":
            for b, m in r["batch"].items():
                raw[(v.backbone, v.backend, v.precision)] = max(raw.get((v.backbone, v.backend, v.precision), 0),
                                                                 m["images_per_s"])
                rows.append(f"{f'backbone {v.backbone} {v.backend} {v.precision} b{b}':<50} {m['images_per_s']:>8.0f}"
                            f"      {r['device']}, compile {m['compile_s']} s, host preprocess "
                            f"{m['host_preprocess_images_per_s']:.0f} img/s")
        else:
            base = raw.get((v.backbone, v.backend, v.precision))
            steady = r.get("steady_images_per_s")
            ratio = f", steady {steady / base:.2f}x backbone" if base and steady else ""
            t = r["timings"]
            rows.append(f"{v.name:<50} {r['images_per_s']:>8.0f}      {r['device']}, steady "
                        f"{steady if steady else '-'} img/s{ratio}, decode wait {t.get('decode_wait_s', 0)} s, "
                        f"embed {t.get('embed_s', 0)} s")
    if skipped:
        rows.append(f"skipped (out of time): {len(skipped)}: " + "; ".join(skipped))
    return "\n".join(rows)


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
    ap.add_argument("--backends", type=lambda s: _csv(s), default=["jax", "torch"])
    ap.add_argument("--precisions", type=lambda s: _csv(s), default=["float16", "bfloat16", "float32"],
                    help="the first is the one measured end to end")
    ap.add_argument("--batch-sizes", type=lambda s: _csv(s, int), default=[64, 256, 512])
    ap.add_argument("--decode-modes", type=lambda s: _csv(s), default=["processes", "threads"],
                    help="end to end, decoders as; the first with every backbone and backend")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--alpha", type=float, default=1.0, help="MobileNet width")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each backbone measurement at least this")
    ap.add_argument("--budget-s", type=float, default=450.0, help="all variants together (the call has 600 s)")
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
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        smoke = {"--images": ("images", 48), "--backbones": ("backbones", ["mobilenetv2"]),
                 "--backends": ("backends", ["jax"]), "--precisions": ("precisions", ["float32", "bfloat16"]),
                 "--batch-sizes": ("batch_sizes", [8, 16]), "--image-size": ("image_size", 64),
                 "--alpha": ("alpha", 0.35), "--min-seconds": ("min_seconds", 0.2),
                 "--budget-s": ("budget_s", 420.0), "--variant-limit-s": ("variant_limit_s", 200.0)}
        for flag, (dest, value) in smoke.items():
            if flag not in given:
                setattr(args, dest, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.carry_size is not None:
        return carry_size(args.carry_size)
    if args.copy_photos:
        copy_photos(Path(args.copy_photos[0]), Path(args.copy_photos[1]), int(args.copy_photos[2]))
        return 0
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    photos = args.photos or (DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else SHARED_DVC)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                  "cpu_smoke": args.cpu_smoke, "budget_s": args.budget_s}
        report["wheels"] = install_wheels(args.wheels, work / "site")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
               "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false")}
        paths = ([str(work / "site")] if report["wheels"]["wheels"] else []) + [str(ROOT)]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        report["photos"] = {"folder": str(photos), **replicate_photos(photos, work / "src", args.images)}
        args.source, args.scratch = work / "src", work
        report["environment"] = environment(env, args.backends[0])
        print(f"environment: {json.dumps(report['environment'])}", flush=True)
        variants = plan(args)
        skipped: list[str] = []
        for v in variants:
            left = args.budget_s - (time.perf_counter() - start) - RESERVE_S
            if left < min(MIN_VARIANT_S, v.limit_s):
                skipped.append(v.name)
                continue
            v.result = run_variant(v, args, env, min(v.limit_s, left))
            print(f"{v.name}: {json.dumps(v.result)}", flush=True)
        report["variants"] = [{**asdict(v), "name": v.name} for v in variants if v.result]
        report["skipped_out_of_time"] = skipped
        report["elapsed_s"] = round(time.perf_counter() - start, 1)
        text = table(variants, skipped)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
        (args.out / "gpu_check.txt").write_text(text + "\n")
        print(f"\n{text}\nelapsed {report['elapsed_s']} s; results in {args.out}/gpu_check.json", flush=True)
    errors = [v for v in variants if "error" in v.result]
    return 1 if errors and len(errors) == sum(1 for v in variants if v.result) else 0


if __name__ == "__main__":
    sys.exit(main())
