"""Decode + resize per core: the project's PIL decoder against libjpeg-turbo candidates.

Each decoder runs single-threaded in its own fresh process over the same
list of real photos (Dogs vs Cats at their own sizes, Imagenette at 224 px);
rounds alternate the order of the decoders, and the median img/s per decoder
is reported with its ratio to ``pil``. Candidates (those whose package is
missing are left out and named):

  pil          pipeline.images.decode_image (Pillow: DCT draft, EXIF orientation, bilinear resize)
  simplejpeg   pipeline.images.decode_image(..., decoder="simplejpeg") when the project offers it, else
               simplejpeg's libjpeg-turbo decode at the smallest DCT scale >= size + the same PIL resize
  sj-exact     simplejpeg decode at Pillow's draft scale (1, 1/2, 1/4, 1/8) + the same PIL resize:
               the same pixels as pil (no EXIF handling: the photos have none that rotates)
  sj-dct-pil   simplejpeg decode at the smallest of its 16 DCT scales >= size + the same PIL resize
  sj-cv2       simplejpeg decode (DCT scale) + cv2.resize INTER_AREA
  cv2          cv2.imdecode with IMREAD_REDUCED_COLOR_{2,4,8} (DCT scale, EXIF applied) + cv2.resize INTER_AREA

Every candidate reads the file's bytes itself, so file reads are counted
for all. ``--check`` also prints the mean pixel difference to ``pil``.

    python scripts/bench_decoder.py --images 400 --rounds 5 --size 224
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from benchkit import cpu_name, run_child, timed_rate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT / ".." / "shared" / "data"
DECODERS = ("pil", "simplejpeg", "sj-exact", "sj-dct-pil", "sj-cv2", "cv2")


def photo_list(n: int) -> list[Path]:
    """``n`` photos, half Dogs vs Cats (own sizes), half Imagenette (224 px), in a fixed shuffled order."""
    dvc = sorted((SHARED / "dogs-vs-cats" / "train").glob("*.jpg"))
    inet = sorted((SHARED / "imagenette-mini").glob("*/*/*.JPEG")) + sorted((SHARED / "imagenette-mini").glob("*/*/*.jpg"))
    rng = np.random.default_rng(0)
    half = n // 2
    picked = list(rng.choice(dvc, min(half, len(dvc)), replace=False)) + \
        list(rng.choice(inet, min(n - half, len(inet)), replace=False))
    rng.shuffle(picked)
    return [Path(p) for p in picked]


def make_decoder(name: str, size: int) -> Callable[[Path], np.ndarray]:
    hw = (size, size)
    if name == "pil":
        from pipeline.images import decode_image

        return lambda p: decode_image(p, hw)
    if name == "simplejpeg":
        try:
            from pipeline.images.decode import DECODERS as offered
        except ImportError:
            offered = ("pil",)
        if "simplejpeg" in offered:
            from pipeline.images import decode_image

            return lambda p: decode_image(p, hw, decoder="simplejpeg")
        import simplejpeg
        from PIL import Image

        def sj(p: Path) -> np.ndarray:
            arr = simplejpeg.decode_jpeg(p.read_bytes(), "RGB", min_height=size, min_width=size)
            return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))

        return sj
    if name in ("sj-exact", "sj-dct-pil"):
        import simplejpeg
        from PIL import Image

        def sj_pil(p: Path) -> np.ndarray:
            data = p.read_bytes()
            if name == "sj-exact":  # Pillow's draft scales only (1/1, 1/2, 1/4, 1/8): the same pixels as pil
                h, w, _, _ = simplejpeg.decode_jpeg_header(data)
                s = next((s for s in (8, 4, 2) if min(w // size, h // size) >= s), 1)
                arr = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // s), min_width=-(-w // s))
            else:
                arr = simplejpeg.decode_jpeg(data, "RGB", min_height=size, min_width=size)
            return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))

        return sj_pil
    import cv2

    cv2.setNumThreads(1)
    if name == "sj-cv2":
        import simplejpeg

        def sj_cv2(p: Path) -> np.ndarray:
            arr = simplejpeg.decode_jpeg(p.read_bytes(), "RGB", min_height=size, min_width=size)
            return cv2.resize(arr, hw, interpolation=cv2.INTER_AREA)

        return sj_cv2
    if name == "cv2":
        def cv(p: Path) -> np.ndarray:
            data = np.frombuffer(p.read_bytes(), np.uint8)
            head = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_8)  # pick the smallest scale >= size
            flag = cv2.IMREAD_COLOR
            for scale, f in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                             (2, cv2.IMREAD_REDUCED_COLOR_2)):
                if min(head.shape[:2]) * 8 // scale >= size:
                    flag = f
                    break
            bgr = cv2.imdecode(data, flag)
            return cv2.cvtColor(cv2.resize(bgr, hw, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)

        return cv
    raise SystemExit(f"unknown decoder {name!r}; expected one of {', '.join(DECODERS)}")


def worker(name: str, n: int, size: int, repeat: int) -> None:
    files = photo_list(n)
    decode = make_decoder(name, size)
    for p in files[:20]:  # warm: imports, first-call set-up, page cache
        decode(p)
    rate = timed_rate(lambda: [decode(p) for p in files], len(files), 0.0, repeat)
    print(json.dumps({"decoder": name, "images_per_s": rate}))


def check(names: list[str], n: int, size: int) -> dict[str, float]:
    """Mean absolute pixel difference of each decoder to ``pil`` (0-255 scale)."""
    files = photo_list(n)
    ref = make_decoder("pil", size)
    out = {}
    for name in names:
        dec = make_decoder(name, size)
        out[name] = float(np.mean([np.abs(dec(p).astype(np.int16) - ref(p)).mean() for p in files]))
    return out


def available(name: str) -> bool:
    mods = {"pil": [], "simplejpeg": ["simplejpeg"], "sj-exact": ["simplejpeg"], "sj-dct-pil": ["simplejpeg"],
            "sj-cv2": ["simplejpeg", "cv2"], "cv2": ["cv2"]}[name]
    code = "; ".join(f"import {m}" for m in mods) or "pass"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoders", default=",".join(DECODERS))
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=2, help="passes over the list per measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--check", action="store_true", help="also print the mean pixel difference to pil")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.images, args.size, args.repeat)
        return
    names = [d for d in args.decoders.split(",") if d]
    missing = [d for d in names if not available(d)]
    names = [d for d in names if d not in missing]
    if missing:
        print(f"left out (package missing): {', '.join(missing)}", file=sys.stderr)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
    rates: dict[str, list[float]] = {d: [] for d in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            got = run_child([sys.executable, __file__, "--worker", name, "--images", str(args.images),
                             "--size", str(args.size), "--repeat", str(args.repeat)], env)
            if "error" in got:
                raise SystemExit(f"{name}: {got['error']}")
            rates[name].append(got["images_per_s"])
        print(f"round {r + 1}: " + ", ".join(f"{d} {rates[d][-1]:.0f}" for d in names), file=sys.stderr)
    base = float(np.median(rates["pil"])) if "pil" in rates else None
    result = {"images": args.images, "size": args.size, "rounds": args.rounds, "cpu": cpu_name(), "decoders": {}}
    diffs = check([d for d in names if d != "pil"], min(args.images, 100), args.size) if args.check else {}
    print(f"{'decoder':<12} {'img/s/core':>11} {'x pil':>6} {'min':>6} {'max':>6}" + ("  mean|px-pil|" if diffs else ""))
    for name in names:
        med = float(np.median(rates[name]))
        ratio = med / base if base else float("nan")
        result["decoders"][name] = {"median_images_per_s": med, "ratio_to_pil": ratio, "rounds": rates[name],
                                    **({"mean_abs_pixel_diff": diffs[name]} if name in diffs else {})}
        extra = f"  {diffs[name]:.3f}" if name in diffs else ""
        print(f"{name:<12} {med:>11.0f} {ratio:>6.2f} {min(rates[name]):>6.0f} {max(rates[name]):>6.0f}{extra}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
