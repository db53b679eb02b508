"""Reading WebDataset shards: this project's tarfile index (random access) vs the webdataset package (a stream).

    python scripts/bench_webdataset.py [--photos 400] [--size 128]

Writes shards of real photos to a temporary folder, then times (1) listing
+ reading every image's bytes, (2) listing + decoding every image, both in
file order, and (3) decoding in a shuffled order, which only the index can
do without reading whole shards. Prints seconds and ratios; the webdataset
package is optional (pip install webdataset).
"""

from __future__ import annotations

import argparse
import io
import random
import tarfile
import tempfile
import time
from pathlib import Path

from pipeline.images import list_images
from pipeline.images.decode import decode_stream

DVC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dogs-vs-cats" / "train"


def write_shards(folder: Path, photos: list[Path], per_shard: int) -> None:
    for k in range(0, len(photos), per_shard):
        with tarfile.open(folder / f"bench-{k // per_shard:03d}.tar", "w") as tar:
            for j, photo in enumerate(photos[k:k + per_shard]):
                for name, data in ((f"{k + j:06d}.jpg", photo.read_bytes()), (f"{k + j:06d}.cls", photo.name[:3].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    size = (args.size, args.size)
    photos = sorted(DVC.glob("*.jpg"))[: args.photos]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_shards(folder, photos, max(1, len(photos) // 4))
        pattern = str(folder / f"bench-{{000..{len(list(folder.glob('*.tar'))) - 1:03d}}}.tar")

        def index_bytes() -> None:
            src = list_images(pattern)
            for i in range(len(src.paths)):
                shard, offset, n = src.members[i]
                with open(src.shards[shard], "rb") as fh:
                    fh.seek(offset)
                    fh.read(n)

        def index_decode(order: str = "file") -> None:
            src = list_images(pattern)
            idx = list(range(len(src.paths)))
            if order == "shuffled":
                random.Random(0).shuffle(idx)
            for i in idx:
                src.decode(i, size)

        results = {"tarfile index: list + read bytes": timed(index_bytes),
                   "tarfile index: list + decode": timed(index_decode),
                   "tarfile index: list + decode, shuffled order": timed(lambda: index_decode("shuffled"))}
        try:
            import webdataset as wds
        except ImportError:
            wds = None
        if wds is not None:
            def stream_bytes() -> None:
                for sample in wds.WebDataset(pattern, shardshuffle=False, empty_check=False):
                    sample["jpg"]

            def stream_decode() -> None:
                for sample in wds.WebDataset(pattern, shardshuffle=False, empty_check=False):
                    decode_stream(io.BytesIO(sample["jpg"]), size)

            results["webdataset: stream bytes"] = timed(stream_bytes)
            results["webdataset: stream + decode"] = timed(stream_decode)
        base = results["tarfile index: list + decode"]
        for name, seconds in results.items():
            print(f"{name:48s} {seconds:7.3f} s   {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
