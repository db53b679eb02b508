"""WebDataset tar shards as input: listing, labels, decoding by offset, features equal to a folder's, resume."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import DVC, requires_shared
from pipeline.errors import SourceError
from pipeline.images import list_images, listing_digest, try_decode

PER_CLASS = 5
SIZE = (128, 128)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def photo(label: str, i: int) -> Path:
    return DVC / f"{label}.{i}.jpg"


def make_dataset(tmp: Path) -> tuple[Path, Path]:
    """The same photos as WebDataset shards (one per class, cls + txt members) and as class folders.

    Each side also holds one truncated JPEG (``cat/9999``); the shards also a sample with no image.
    """
    shards, folder = tmp / "shards", tmp / "folder"
    shards.mkdir()
    broken = photo("cat", 0).read_bytes()[:2000]
    for k, label in enumerate(("cat", "dog")):
        (folder / label).mkdir(parents=True)
        with tarfile.open(shards / f"train-{k:03d}.tar", "w") as tar:
            for i in range(PER_CLASS):
                data = photo(label, i).read_bytes()
                (folder / label / f"{i:04d}.jpg").write_bytes(data)
                _add(tar, f"{label}/{i:04d}.jpg", data)
                _add(tar, f"{label}/{i:04d}.cls", str(k).encode())
                _add(tar, f"{label}/{i:04d}.txt", f"a {label}\n".encode())
            if label == "cat":
                (folder / "cat" / "9999.jpg").write_bytes(broken)
                _add(tar, "cat/9999.jpg", broken)
                _add(tar, "cat/9999.cls", b"0")
            else:
                _add(tar, "dog/orphan.cls", b"1")
    return shards, folder


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path]:
    if not DVC.is_dir():
        pytest.skip(f"needs the photos in {DVC}")
    return make_dataset(tmp_path)


def test_listing_names_labels_and_skips(dataset):
    shards, _ = dataset
    src = list_images(shards)
    assert src.layout == "webdataset" and src.root == shards.resolve()
    assert src.paths[0] == "train-000.tar:cat/0000" and src.paths[-1] == "train-001.tar:dog/orphan"
    assert len(src.paths) == 2 * PER_CLASS + 2
    assert src.classes == ["0", "1"]  # cls before txt
    assert src.labels[:PER_CLASS] == ["0"] * PER_CLASS
    assert list(src.problems) == [len(src.paths) - 1]
    assert "without an image member" in src.problems[len(src.paths) - 1]
    assert isinstance(src.decode(len(src.paths) - 1, SIZE), str)
    broken = src.paths.index("train-000.tar:cat/9999")
    assert isinstance(src.decode(broken, SIZE), str)  # a corrupt member is a skip reason, not an exception


def test_labels_from_txt_or_a_named_key(dataset, tmp_path):
    shards, _ = dataset
    assert list_images(shards, label_key="txt").classes == ["a cat", "a dog"]
    only_txt = tmp_path / "only_txt.tar"
    with tarfile.open(only_txt, "w") as tar:
        _add(tar, "x.jpg", photo("cat", 1).read_bytes())
        _add(tar, "x.txt", b"kitten")
    assert list_images(only_txt).labels == ["kitten"]
    assert list_images(only_txt, label_key="cls").labels == [None]
    with pytest.raises(SourceError, match="only for WebDataset"):
        list_images(dataset[1], label_key="cls")


def test_brace_patterns_single_tars_and_bad_shards(dataset, tmp_path):
    shards, _ = dataset
    whole = list_images(shards)
    assert list_images(f"{shards}/train-{{000..001}}.tar").paths == whole.paths
    assert list_images(f"{shards}/train-{{000,001}}.tar", layout="webdataset").paths == whole.paths
    assert list_images(shards / "train-001.tar").paths[0] == "train-001.tar:dog/0000"
    with pytest.raises(SourceError, match="1 of the 3 shards"):
        list_images(f"{shards}/train-{{000..002}}.tar")
    (tmp_path / "packed.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(SourceError, match="compressed"):
        list_images(tmp_path / "packed.tar.gz", layout="webdataset")


def test_decoded_pixels_equal_the_folders(dataset):
    shards, folder = dataset
    src = list_images(shards)
    for i, path in enumerate(src.paths):
        if i in src.problems:
            continue
        key = path.split(":", 1)[1]
        from_tar, from_file = src.decode(i, SIZE), try_decode(folder / f"{key}.jpg", SIZE)
        assert type(from_tar) is type(from_file)
        if isinstance(from_file, np.ndarray):
            np.testing.assert_array_equal(from_tar, from_file)
    # threads decode entries out of order from the same shard
    from concurrent.futures import ThreadPoolExecutor

    order = list(range(len(src.paths)))[::-1] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: src.decode(i, SIZE), order))
    for i, got in zip(order, results):
        expected = src.decode(i, SIZE)
        assert (got == expected if isinstance(got, str) else np.array_equal(got, expected))


def test_digest_covers_shard_contents(dataset):
    shards, _ = dataset
    listed = list_images(shards)
    before = listing_digest(listed)
    with tarfile.open(shards / "train-001.tar", "w") as tar:  # same names, other bytes
        for i in range(PER_CLASS):
            _add(tar, f"dog/{i:04d}.jpg", photo("dog", i + 10).read_bytes())
            _add(tar, f"dog/{i:04d}.cls", b"1")
            _add(tar, f"dog/{i:04d}.txt", b"a dog\n")
        _add(tar, "dog/orphan.cls", b"1")
    after = list_images(shards)
    assert after.paths == listed.paths and after.labels == listed.labels
    assert listing_digest(after) != before


def _read(store: Path) -> dict[str, np.ndarray]:
    with h5py.File(store) as f:
        return {name: f[name][:] for name in ("features", "labels", "paths", "skipped/paths", "skipped/reasons")}


@requires_shared
def test_same_features_as_the_folder_end_to_end(dataset, tmp_path, small_backbone):
    from pipeline.extract import extract_features

    shards, folder = dataset
    opts = dict(shuffle=False, batch_size=64, progress=False)  # one batch each: the same photos embedded together
    extract_features(list_images(shards), tmp_path / "tar.h5", small_backbone, **opts)
    extract_features(list_images(folder), tmp_path / "dir.h5", small_backbone, **opts)
    tar, folder_rows = _read(tmp_path / "tar.h5"), _read(tmp_path / "dir.h5")
    tar_keys = [p.decode().split(":", 1)[1] for p in tar["paths"]]
    assert tar_keys == [p.decode()[: -len(".jpg")] for p in folder_rows["paths"]]
    assert [p.decode() for p in tar["paths"]][0] == "train-000.tar:cat/0000"
    np.testing.assert_array_equal(tar["features"], folder_rows["features"])  # bitwise
    assert sorted(p.decode() for p in tar["skipped/paths"]) == ["train-000.tar:cat/9999", "train-001.tar:dog/orphan"]
    with h5py.File(tmp_path / "tar.h5") as f:
        assert f.attrs["layout"] == "webdataset" and f.attrs["source_root"] == str(shards.resolve())


class _Interrupted(Exception):
    pass


@requires_shared
def test_interrupted_tar_extraction_resumes_to_an_identical_store(dataset, tmp_path, small_backbone, monkeypatch):
    from pipeline.extract import extract_features

    shards, _ = dataset
    opts = dict(batch_size=2, checkpoint_rows=2, progress=False)
    extract_features(list_images(shards), tmp_path / "straight.h5", small_backbone, **opts)
    embed, calls = small_backbone.embed, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise _Interrupted("simulated crash")
        return embed(*args, **kwargs)

    monkeypatch.setattr(small_backbone, "embed", failing)
    with pytest.raises(_Interrupted):
        extract_features(list_images(shards), tmp_path / "resumed.h5", small_backbone, **opts)
    monkeypatch.undo()
    assert list((tmp_path / "resumed.h5.parts").glob("shard-*.h5"))
    res = extract_features(list_images(shards), tmp_path / "resumed.h5", small_backbone, **opts)
    assert res.resumed_at > 0
    straight, resumed = _read(tmp_path / "straight.h5"), _read(tmp_path / "resumed.h5")
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name])


def test_cli_reports_bad_shards_cleanly(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    result = CliRunner().invoke(main, ["extract-features", f"{tmp_path}/s-{{000..003}}.tar", "-o", str(tmp_path / "o.h5")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "4 of the 4 shards" in result.output, result.output
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 64)
    result = CliRunner().invoke(main, ["extract-features", str(tmp_path / "bad.tar"), "-o", str(tmp_path / "o.h5")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "not an uncompressed tar shard" in result.output, result.output


def test_duplicate_members_are_recorded_as_skipped_with_a_reason(tmp_path):
    if not DVC.is_dir():
        pytest.skip(f"needs the photos in {DVC}")
    shard = tmp_path / "dup.tar"
    a, b = photo("cat", 1).read_bytes(), photo("dog", 2).read_bytes()
    with tarfile.open(shard, "w") as tar:
        for name, data in (("k1.jpg", a), ("k1.cls", b"0"), ("k1.jpg", b), ("k2.jpg", a), ("k3.png", b),
                           ("k3.jpg", a), ("K4.jpg", a), ("K4.JPG", b)):
            _add(tar, name, data)
    src = list_images(shard)
    assert src.paths == ["dup.tar:k1", "dup.tar:k2", "dup.tar:k3", "dup.tar:K4",
                         "dup.tar:k1#k1.jpg", "dup.tar:k3#k3.png", "dup.tar:K4#K4.JPG"]
    assert sorted(src.problems) == [4, 5, 6]
    assert "duplicate member k1.jpg in sample k1" in src.problems[4]
    assert "second image k3.png in sample k3 (its k3.jpg is used)" in src.problems[5]
    assert "duplicate member K4.JPG" in src.problems[6]
    first = src.decode(0, SIZE)
    assert isinstance(first, np.ndarray)
    np.testing.assert_array_equal(first, try_decode(photo("cat", 1), SIZE))  # the first k1.jpg is kept


def test_a_tar_truncated_inside_a_label_keeps_the_samples_before(tmp_path):
    if not DVC.is_dir():
        pytest.skip(f"needs the photos in {DVC}")
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        for i in range(3):
            _add(tar, f"s{i}.jpg", photo("cat", i).read_bytes())
            _add(tar, f"s{i}.cls", b"0" * 600)
    data = whole.read_bytes()
    with tarfile.open(whole) as tar:
        cut = next(m for m in tar.getmembers() if m.name == "s2.cls").offset_data + 100
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    with pytest.warns(UserWarning, match="damaged after 3 samples"):
        src = list_images(tmp_path / "cut.tar")
    assert src.paths[:2] == ["cut.tar:s0", "cut.tar:s1"] and src.labels[:2] == ["0" * 600] * 2
    assert isinstance(src.decode(0, SIZE), np.ndarray)


def test_a_huge_brace_pattern_is_refused_before_it_is_expanded(tmp_path):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SourceError, match="names up to 10,000,000 shards; at most 100,000"):
        list_images(f"{tmp_path}/x-{{0..9999999}}.tar", layout="webdataset")
    with pytest.raises(SourceError, match="names up to"):
        list_images(f"{tmp_path}/x-{{0..9999}}-{{a,b,c,d,e,f,g,h,i,j,k}}.tar", layout="webdataset")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing was expanded
