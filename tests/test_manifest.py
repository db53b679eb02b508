"""CSV manifests: as spreadsheets save them, paths kept inside their root, duplicates named by line."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from pipeline.errors import SourceError
from pipeline.images import list_images


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "café.png"):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / name)
    return tmp_path


def _manifest(root: Path, content: bytes | str, name: str = "list.csv") -> Path:
    path = root / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize("content", [
    "path,label\nimgs/a.png,ant\nimgs/b.png,bee\n",
    "\ufeffPath;Label\r\nimgs/a.png;ant\r\n\"imgs/b.png\";\"bee\"\r\n;\r\n",          # Excel, many locales
    " PATH , LABEL ,,\nimgs/a.png,ant,,\nimgs/b.png , bee ,,\n,,,\n\n",             # trailing columns and rows
    "path\tlabel\nimgs\\a.png\tant\n./imgs//b.png\tbee\n",                          # tabs, Windows separators
])
def test_spreadsheet_csvs_load_as_saved(root, content):
    src = list_images(_manifest(root, content))
    assert src.paths == ["imgs/a.png", "imgs/b.png"] and src.labels == ["ant", "bee"] and not src.problems


def test_utf16_and_windows_1252_manifests(root):
    text = "path,label\nimgs/café.png,crème\n"
    src = list_images(_manifest(root, text.encode("utf-16")))
    assert src.paths == ["imgs/café.png"] and src.classes == ["crème"] and not src.problems
    with pytest.warns(UserWarning, match="read as Windows-1252"):
        src = list_images(_manifest(root, text.encode("cp1252")))
    assert src.paths == ["imgs/café.png"] and src.classes == ["crème"] and not src.problems
    src = list_images(_manifest(root, text.encode("latin-1")), encoding="latin-1")
    assert src.classes == ["crème"]


@pytest.mark.parametrize("content,message", [
    ("path,label\nimgs/a.png,ant\nimgs/b.png,bee\nimgs/a.png,bee\n",
     "line 4: imgs/a.png is listed again with label 'bee' (line 2 gave it label 'ant')"),
    ("path,label\nimgs/a.png,ant\n./imgs/a.png,\n",
     "line 3: imgs/a.png is listed again with no label (line 2 gave it label 'ant')"),
    ("path,label\n../outside.png,x\n", "line 2: '../outside.png' is not inside"),
    ("path,label\nimgs/../../outside.png,x\n", "line 2: 'imgs/../../outside.png' is not inside"),
    ("path,label\nimgs/a.png,x\n/etc/passwd,x\n", "line 3: '/etc/passwd' is not inside"),
    ("path,label\nC:\\data\\a.png,x\n", "line 2: 'C:\\\\data\\\\a.png' is not inside"),
    ("path,label\n,x\n", "line 2 has no path"),
    ("path,label\n.,x\n", "line 2: '.' names the folder itself"),
    ("file,label\na.png,x\n", "expected a header with a 'path' column"),
    ("\n\n", "is empty"),
    ("path,label\n\"imgs/a.png,x\n", "line 2"),   # an unclosed quote swallows the rest: csv's own error
])
def test_bad_manifests_name_the_line(root, content, message):
    with pytest.raises(SourceError) as info:
        list_images(_manifest(root, content))
    assert message in str(info.value)


def test_same_path_same_label_is_kept_once_with_a_warning(root):
    with pytest.warns(UserWarning, match="imgs/a.png is listed on lines 2 and 3; it is used once"):
        src = list_images(_manifest(root, "path,label\nimgs/a.png,ant\nimgs//a.png,ant\n"))
    assert src.paths == ["imgs/a.png"]


def test_many_errors_are_summarised(root):
    content = "path\n" + "".join(f"../{i}.png\n" for i in range(8))
    with pytest.raises(SourceError, match="and 3 more"):
        list_images(_manifest(root, content))


def test_paths_inside_root_are_recorded_relative(root):
    src = list_images(_manifest(root, "path,label\nimgs/x/../a.png,ant\n"))
    assert src.paths == ["imgs/a.png"] and src.file(0) == root / "imgs" / "a.png"


def test_manifest_elsewhere_with_an_explicit_root(root):
    (root / "lists").mkdir()
    manifest = _manifest(root, "path,label\n../imgs/a.png,ant\n", "lists/train.csv")
    with pytest.raises(SourceError, match="is not inside"):
        list_images(manifest)
    src = list_images(_manifest(root, "path,label\nimgs/a.png,ant\n", "lists/train.csv"), root=root)
    assert src.paths == ["imgs/a.png"] and src.root == root and not src.problems


def test_special_and_missing_entries_are_kept_with_reasons(root):
    os.mkfifo(root / "imgs" / "pipe.png")
    manifest = _manifest(root, "path,label\nimgs/a.png,x\nimgs/pipe.png,x\nimgs,x\nimgs/gone.png,x\n")
    src = list_images(manifest)
    reasons = {src.paths[i]: r for i, r in src.problems.items()}
    assert reasons == {"imgs/pipe.png": "not a regular file: a named pipe (FIFO)", "imgs": "not a regular file: a folder",
                       "imgs/gone.png": "file not found"}
    assert src.decode(src.paths.index("imgs/pipe.png"), (4, 4)) == "not a regular file: a named pipe (FIFO)"


def test_a_fifo_as_the_manifest_is_refused_without_blocking(root):
    os.mkfifo(root / "list.csv")
    errors: list[Exception] = []
    t = threading.Thread(target=lambda: errors.append(_catch(lambda: list_images(root / "list.csv"))), daemon=True)
    t.start()
    t.join(10)
    assert errors and "named pipe" in str(errors[0])


def _catch(func) -> Exception | None:
    try:
        func()
    except Exception as exc:
        return exc
    return None


@pytest.mark.parametrize("content,message", [
    ("path,label\nimgs/a.png,ant\nimgs/a.png,bee\n", "line 3: imgs/a.png is listed again"),
    ("path,label\n../x.png,ant\n", "line 2: '../x.png' is not inside"),
    ("path,label\nimgs/a.png,ant\nimgs/a.png,\n", "line 3: imgs/a.png is listed again with no label"),
])
def test_cli_shows_manifest_errors_cleanly(root, content, message):
    manifest = _manifest(root, content)
    result = CliRunner().invoke(main, ["extract-features", str(manifest), "-o", str(root / "out.h5")])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not (root / "out.h5").exists()
