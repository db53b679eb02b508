"""Extraction throughput per kernels, backend and precision, each variant in its own process.

The kernels (``TF_ENABLE_ONEDNN_OPTS``) and the Keras backend are fixed when
TensorFlow / Keras are imported, so every measurement runs in a fresh
subprocess; variants alternate round by round (baseline, candidate, baseline,
...) and medians are reported, which keeps a shared machine's load from
favouring one side. Per backbone and variant:

  raw  = img/s of ``Backbone.embed`` on batches already decoded in memory
  e2e  = img/s of ``extract_features`` reading, decoding, embedding, writing
         (with ``--e2e``)

and, once, the decode rate of the input side (PIL decode + resize, img/s
with 1 thread, every core as threads and every core as processes,
``--decode``), so you can tell how many decoders the model needs and whether
threads queue on the GIL. Variants:

  tf-default  TensorFlow, TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's default on AMD / older Intel CPUs)
  tf          TensorFlow with the pipeline's default kernels (oneDNN on x86)
  jax         Keras on JAX (``pip install -e '.[jax]'``)
  torch       Keras on PyTorch, where installed

keras-hub transformers (random weights, built here and saved as preset folders,
so nothing is downloaded; the speed does not depend on the weights):

  hub-dinov2-s14  DINOv2 ViT-S/14 at 224 (12 layers, width 384, 6 heads; pooling cls+mean, 768-d)
  hub-vit-b16     ViT-B/16 at 224 (12 layers, width 768, 12 heads; pooling cls, 768-d)

    python scripts/bench_extract.py --backbones mobilenetv2,resnet50 --backend tf-default,tf,jax \\
        --precision float32,bfloat16 --images 256 --rounds 3
    python scripts/bench_extract.py --backbones resnet50,hub-dinov2-s14,hub-vit-b16 --backend tf,jax --e2e
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchkit import HUB_RANDOM, cpu_name, decode_rates, make_hub_preset, run_child, timed_rate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
DEFAULT_SOURCE = ROOT / ".." / "shared" / "data" / "dogs-vs-cats" / "train"
VARIANTS = {
    "tf-default": {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"},
    "tf": {"KERAS_BACKEND": "tensorflow"},
    "jax": {"KERAS_BACKEND": "jax"},
    "torch": {"KERAS_BACKEND": "torch"},
}


def backbone_spec(name: str, tmp: Path) -> str:
    """The --backbone value of ``name``: hub-* names become a preset folder made once (in a subprocess)."""
    if name not in HUB_RANDOM:
        return name
    folder = tmp / name
    if not folder.exists():
        subprocess.run([sys.executable, __file__, "--make-preset", name, "--source", str(folder)], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return f"hub:{folder}"


def subset_source(src: Path, n: int, folder: Path) -> Path:
    names = sorted(p.name for p in src.glob("*.jpg"))
    rng = np.random.default_rng(0)
    for name in rng.choice(names, size=min(n, len(names)), replace=False):
        (folder / name).symlink_to(src / name)
    return folder


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    from pipeline.backbones import BackboneConfig, backbone_for
    from pipeline.extract import extract_features
    from pipeline.images import decode_image, list_images

    hub = args.backbone.startswith("hub:")
    config = BackboneConfig(args.backbone, "none", pooling="" if hub else "avg", precision=args.precision)
    bb = backbone_for(config)
    listed = list_images(args.source)
    images = np.stack([decode_image(args.source / p, bb.input_size) for p in listed.paths])
    batch = args.batch_size
    bb.embed(images[:batch], batch)  # compile / trace once
    res = {"raw": timed_rate(lambda: bb.embed(images, batch), len(images), 0.0, 1)}
    if args.e2e:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            extract_features(listed, Path(tmp) / "bench.h5", config, batch_size=batch, progress=False)
            res["e2e"] = len(images) / (time.perf_counter() - t0)
    keys = ("backend", "kernels", "onednn_env", "precision", "device")
    print(json.dumps({**res, **{k: bb.info[k] for k in keys}, "images": len(images)}), flush=True)


def spawn(variant: str, backbone: str, precision: str, source: Path, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")}
    env.update({**VARIANTS[variant], "PYTHONPATH": str(ROOT)})
    cmd = [sys.executable, __file__, "--worker", "--backbone", backbone, "--precision", precision,
           "--source", str(source), "--batch-size", str(args.batch_size)] + (["--e2e"] if args.e2e else [])
    return run_child(cmd, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Kaggle-layout folder of photos")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backbones", default="mobilenetv2,resnet50")
    parser.add_argument("--backend", default="tf-default,tf", help=f"variants, from {', '.join(VARIANTS)}")
    parser.add_argument("--precision", default="float32", help="float32,bfloat16,float16,auto (comma list)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--e2e", action="store_true", help="also time extract_features end to end")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--make-preset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.make_preset:
        make_hub_preset(args.make_preset, args.source)
        return None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as presets:
        source = subset_source(args.source, args.images, Path(tmp))
        from pipeline.images import list_images
        from pipeline.workers import available_cpus

        decode = decode_rates(list_images(source), (224, 224), available_cpus())
        print("decode (PIL, 224x224, img/s): " + ", ".join(f"{k} {v}" for k, v in decode.items()), flush=True)
        configs = [(v, p) for v in args.backend.split(",") for p in args.precision.split(",")]
        results = []
        for backbone in args.backbones.split(","):
            spec = backbone_spec(backbone, Path(presets))
            runs: dict[tuple[str, str], list[dict]] = {c: [] for c in configs}
            for _ in range(args.rounds):
                for config in configs:
                    runs[config].append(spawn(*config[:1], spec, config[1], source, args))
                    print(f"  run {backbone} {config[0]} {config[1]}: {json.dumps(runs[config][-1])}", flush=True)
            for (variant, precision), got in runs.items():
                ok = [r for r in got if "error" not in r]
                row = {"backbone": backbone, "variant": variant, "precision": precision, "runs": got}
                if ok:
                    row.update({k: ok[0][k] for k in ("backend", "kernels", "onednn_env", "device")})
                    for key in ("raw", "e2e"):
                        if key in ok[0]:
                            row[key] = float(np.median([r[key] for r in ok]))
                results.append(row)
                print(f"{backbone:>12} {variant:>10} {precision:>8}: " + (
                    f"raw {row['raw']:6.1f} img/s" + (f", e2e {row['e2e']:6.1f} ({row['e2e'] / row['raw']:.2f}x raw)"
                                                      if "e2e" in row else "")
                    + f"  [{row['kernels']}, {row['onednn_env']}, {row['device']}]" if ok else got[0]["error"]),
                    flush=True)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps({"decode": decode, "cpu": cpu_name(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
