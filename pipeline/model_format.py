"""The model file container: a zip of ``model.json`` and ``.npy`` arrays (numpy's ``.npz`` layout).

Every member is stored uncompressed; arrays are written and read with
``allow_pickle=False`` and checked (numeric or string dtype, size consistent
with the member) before they are read. ``numpy.load(path)`` opens a model
file like any ``.npz``. Nothing here unpickles.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelFileError
from pipeline.fsutil import MAX_JSON_BYTES
from pipeline.state_codec import ARRAY_KINDS
from pipeline.fsutil import pause_point
from pipeline.store import atomic_path

DOCUMENT = "model.json"
ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_DOCUMENT_BYTES = MAX_JSON_BYTES  # model.json; its arrays are members of their own
MAX_MEMBERS = 100_000
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then the name and extra field lengths at offset 26


def sniff(path: Path) -> str:
    """``zip``, ``pickle``, ``hdf5``, ``empty`` or ``unknown``, from the first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    return "unknown"


def write_container(path: Path, document: dict[str, Any], arrays: dict[str, np.ndarray],
                    blobs: dict[str, bytes] | None = None) -> None:
    """Write atomically: until the rename at the end, ``path`` keeps its old content."""
    text = json.dumps(document, allow_nan=False, ensure_ascii=False).encode("utf-8")
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr(DOCUMENT, text)
            pause_point("model-write", tmp)
            for name, arr in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=arr.nbytes > (1 << 30)) as fh:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)
            for name, data in (blobs or {}).items():
                zf.writestr(name, data)


class Container:
    """An open model file: ``document`` (parsed JSON), ``array(name)`` and ``blob(name)`` on demand."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelFileError(f"{path} is truncated or damaged ({exc})") from None
        try:
            self._check_extents()
        except ModelFileError:
            self.close()
            raise
        try:
            self.document = json.loads(self._read(DOCUMENT, MAX_DOCUMENT_BYTES))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            self.close()
            raise ModelFileError(f"{path}: {DOCUMENT} is not valid JSON ({exc})") from None
        except ModelFileError:
            self.close()
            raise

    def _check_extents(self) -> None:
        """Every member's data lies inside the file, after its own header, before the next member: so
        reading all of them reads at most the file once (no overlapping members, no declared sizes that the
        file cannot hold), checked before any member is read."""
        infos = sorted(self._zip.infolist(), key=lambda i: i.header_offset)
        if len(infos) > MAX_MEMBERS:
            raise ModelFileError(f"{self.path} holds {len(infos):,} members; a model file holds at most "
                                 f"{MAX_MEMBERS:,}: not a model file")
        fp = self._zip.fp
        assert fp is not None
        end_of_data = int(self._zip.start_dir)
        for k, info in enumerate(infos):
            fp.seek(info.header_offset)
            header = fp.read(LOCAL_HEADER.size)
            if len(header) < LOCAL_HEADER.size or not header.startswith(b"PK\x03\x04"):
                raise ModelFileError(f"{self.path}: member {info.filename!r} has no header where the directory "
                                     "says: truncated or crafted")
            _, name_len, extra_len = LOCAL_HEADER.unpack(header)
            stop = info.header_offset + LOCAL_HEADER.size + name_len + extra_len + info.compress_size
            limit = infos[k + 1].header_offset if k + 1 < len(infos) else end_of_data
            if stop > limit:
                what = "the next member" if k + 1 < len(infos) else "the zip directory"
                raise ModelFileError(f"{self.path}: member {info.filename!r} declares {info.compress_size:,} bytes, "
                                     f"which run into {what} (overlapping or oversized members): a crafted or "
                                     "damaged file")
            if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
                raise ModelFileError(f"{self.path}: member {info.filename!r} is stored with {info.compress_size:,} "
                                     f"bytes but declares {info.file_size:,}: a crafted or damaged file")

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise ModelFileError(f"{self.path} has no member {name!r}: not a model file, or a damaged one") from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelFileError(f"{self.path}: member {name!r} is compressed; model files store members as they are")
        return info

    def _read(self, name: str, limit: int) -> bytes:
        info = self._info(name)
        if info.file_size > limit:
            raise ModelFileError(f"{self.path}: member {name!r} is {info.file_size / 2**20:.0f} MB; at most "
                                 f"{limit >> 20} MB is read (a crafted file?)")
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelFileError(f"{self.path} is truncated or damaged ({exc})") from None

    def blob(self, name: str) -> bytes:
        return self._read(name, 1 << 40)

    def array(self, name: str) -> np.ndarray:
        """A stored array, after checking its header against the member's size."""
        info = self._info(f"{name}.npy")
        try:
            with self._zip.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.hasobject:
                    raise ValueError(f"dtype {dtype} is not allowed")
                expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if expected != info.file_size - fh.tell():
                    raise ValueError(f"header says {shape} {dtype}, but the member holds "
                                     f"{info.file_size - fh.tell()} data bytes")
            with self._zip.open(info) as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelFileError(f"{self.path}: array {name!r} is damaged ({exc})") from None

