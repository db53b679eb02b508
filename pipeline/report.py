"""The run report: one self-contained HTML file to look at instead of reading numbers.

``write_report(path, metrics, head=..., test=...)`` writes the settings and data
summary, the learning curve, the accuracy matrix of a class-incremental run
with the forgetting of each class, the held-out confusion matrix, per-class
precision and recall (scikit-learn's, from :mod:`pipeline.evaluate`), and the
photos behind the numbers: for the most confused class pairs, thumbnails of the
misclassified held-out images with their true and predicted class and the
predicted probability. Figures are matplotlib PNGs and thumbnails JPEGs, both
embedded as base64, so the file needs no network and no other file. Its size is
bounded: at most ``max_pairs`` pairs of ``per_pair`` thumbnails of ``side``
pixels (about 4 KB each). matplotlib and Pillow are imported when a report is
written, never on import.

Images are found through each store's ``source_root`` and its recorded paths
(:func:`pipeline.images.path_from_record`); a photo that is no longer there, or
cannot be decoded, is listed without a thumbnail.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.fsutil import write_atomically
from pipeline.heads.base import Head
from pipeline.stream import FeatureStream

MAX_PAIRS = 6
PER_PAIR = 8
THUMB_SIDE = 128


@dataclass(order=True)
class Mistake:
    """One misclassified held-out row: ordered by the predicted probability (most confident first)."""

    probability: float
    path: str = field(compare=False)
    root: str = field(compare=False)
    true: str = field(compare=False)
    predicted: str = field(compare=False)


@dataclass
class Confusions:
    """Counts of every (true, predicted) mistake and the most confident ``keep`` rows of each pair."""

    keep: int
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    rows: dict[tuple[str, str], list[Mistake]] = field(default_factory=dict)

    def add(self, mistake: Mistake) -> None:
        pair = (mistake.true, mistake.predicted)
        self.counts[pair] = self.counts.get(pair, 0) + 1
        heap = self.rows.setdefault(pair, [])
        (heapq.heappush if len(heap) < self.keep else heapq.heappushpop)(heap, mistake)

    def worst(self, pairs: int) -> list[tuple[tuple[str, str], int, list[Mistake]]]:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:pairs]
        return [(pair, n, sorted(self.rows[pair], reverse=True)) for pair, n in ranked]


def find_mistakes(head: Head, test: FeatureStream, keep: int = PER_PAIR) -> Confusions:
    """One pass over the held-out rows, store by store (each has its own ``source_root``)."""
    found = Confusions(keep)
    classes = [str(c) for c in head.classes_]
    if not classes:
        return found
    for store in test.stores:
        root = str(store.meta.get("source_root", "") or "")
        for batch in test.with_options(stores=[store], paths=[store.path]):
            proba = np.asarray(head.predict_proba(batch.X))
            best = np.argmax(proba, axis=1)
            for i in np.flatnonzero([classes[b] != str(t) for b, t in zip(best, batch.y)]):
                found.add(Mistake(float(proba[i, best[i]]), batch.paths[i], root, str(batch.y[i]),
                                  classes[best[i]]))
    return found


def thumbnail(file: Path, side: int = THUMB_SIDE) -> str | None:
    """A base64 JPEG of ``file`` at most ``side`` pixels wide and high (aspect kept), decoded by the
    project's own rules (:mod:`pipeline.images.decode`); None when it is missing or cannot be decoded."""
    from PIL import Image

    from pipeline.images.decode import FORMATS, try_decode
    from pipeline.images.paths import open_regular

    try:
        with open_regular(file) as fh, Image.open(fh, formats=FORMATS) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation turns it a quarter
                w, h = h, w
    except Exception:  # a missing or broken file is shown without a thumbnail
        return None
    scale = side / max(w, h, 1)
    pixels = try_decode(file, (max(1, round(h * scale)), max(1, round(w * scale))))
    if isinstance(pixels, str):
        return None
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=75)
    return base64.b64encode(out.getvalue()).decode("ascii")


def _figure(draw: Callable[[dict[str, Any], Any], None], metrics: dict[str, Any]) -> str:
    out = io.BytesIO()
    draw(metrics, out)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(out.getvalue()).decode("ascii")}">'


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _settings(metrics: dict[str, Any]) -> str:
    held = metrics.get("heldout") or {}
    test = metrics.get("test")
    rows: list[list[Any]] = [["head", metrics.get("head")],
            ["head settings", json.dumps(metrics.get("settings", {}), sort_keys=True)],
            ["backbone", _backbone(metrics.get("backbone") or {})],
            ["classes", f"{len(metrics.get('classes') or [])}: {', '.join(map(str, metrics.get('classes') or []))}"],
            ["rows learnt", metrics.get("rows_seen")],
            ["training stores", ", ".join(str(s) for s in metrics.get("stores") or [])],
            ["evaluated on", _evaluated_on(metrics, test)],
            ["held-out rows", held.get("rows")]]
    if "model" in metrics:
        rows.insert(0, ["model", metrics["model"]])
    return _table(["setting", "value"], [r for r in rows if r[1] not in (None, "")])


def _backbone(bb: dict[str, Any]) -> str:
    if not bb:
        return ""
    return (f"{bb.get('backbone', '?')} ({bb.get('weights', '?')}, {bb.get('feature_dim', '?')}-d"
            + (f", alpha {bb['alpha']}" if bb.get("alpha") not in (None, "") else "") + ")")


def _evaluated_on(metrics: dict[str, Any], test: Any) -> str:
    if isinstance(test, list):
        return ", ".join(map(str, test))
    if test == "holdout" or metrics.get("holdout_fraction"):
        return f"held-out split of the stores (--holdout {metrics.get('holdout_fraction')})"
    return ""


def _summary(metrics: dict[str, Any]) -> str:
    held = metrics.get("heldout") or {}
    cells = [("held-out accuracy", _pct(held.get("accuracy")))]
    if (metrics.get("progressive") or {}).get("accuracy") is not None:
        cells.append(("progressive accuracy", _pct(metrics["progressive"]["accuracy"])))
    if held.get("log_loss") is not None:
        cells.append(("held-out log loss", f"{held['log_loss']:.4f}"))
    for key in ("final_accuracy", "average_incremental_accuracy", "forgetting", "joint_accuracy"):
        if metrics.get(key) is not None:
            cells.append((key.replace("_", " "), _pct(metrics[key])))
    return '<div class="cards">' + "".join(f'<div class="card"><div class="v">{_e(v)}</div><div>{_e(k)}</div></div>'
                                           for k, v in cells) + "</div>"


def class_forgetting(metrics: dict[str, Any]) -> list[list[Any]]:
    """Per class: the task it came in, its accuracy when learnt, its best, its final, and the forgetting
    (best before the last task minus final)."""
    after = metrics.get("class_accuracy_after_each_task") or []
    tasks = metrics.get("tasks") or []
    if not after:
        return []
    rows = []
    for t, task in enumerate(tasks):
        for c in task:
            values = [a.get(str(c)) for a in after[t:]]
            if not values or values[-1] is None:
                continue
            earlier = [v for v in values[:-1] if v is not None]
            rows.append([c, t + 1, _pct(values[0]), _pct(max(earlier) if earlier else values[-1]), _pct(values[-1]),
                         _pct(max(earlier) - values[-1]) if earlier else "n/a (last task)"])
    return rows


def _per_class(metrics: dict[str, Any]) -> str:
    per = (metrics.get("heldout") or {}).get("per_class") or {}
    rows = [[c, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
            for c, r in sorted(per.items(), key=lambda kv: kv[1]["f1"])]
    return _table(["class (worst F1 first)", "precision", "recall", "F1", "held-out rows"], rows)


def _mistakes(found: Confusions, pairs: int, side: int) -> str:
    worst = found.worst(pairs)
    if not worst:
        return "<p>No held-out photo was misclassified.</p>"
    parts = []
    for (true, pred), n, rows in worst:
        tiles = []
        for m in rows:
            from pipeline.images.paths import path_from_record

            file = Path(m.root) / path_from_record(m.path) if m.root else Path(path_from_record(m.path))
            data = thumbnail(file, side)
            img = (f'<img alt="{_e(m.path)}" src="data:image/jpeg;base64,{data}">' if data is not None
                   else f'<div class="missing" style="width:{side}px;height:{side}px">photo not found</div>')
            tiles.append(f'<figure>{img}<figcaption><b>{_e(m.true)}</b> &rarr; {_e(m.predicted)} '
                         f'{100 * m.probability:.0f}%<br><span class="path">{_e(m.path)}</span></figcaption></figure>')
        parts.append(f'<h3>{_e(true)} taken for {_e(pred)}: {n} held-out photo{"s" if n != 1 else ""}'
                     f'{f" (the {len(rows)} most confident shown)" if n > len(rows) else ""}</h3>'
                     f'<div class="tiles">{"".join(tiles)}</div>')
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px}.card .v{font-size:1.6em;font-weight:600}
img{max-width:100%}.tiles{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:140px;font-size:12px}figcaption{word-break:break-all}
.path{color:#777}.missing{background:#eee;color:#777;display:flex;align-items:center;justify-content:center}
.muted{color:#777}
"""


def render(metrics: dict[str, Any], found: Confusions | None = None, *, title: str = "Run report",
           pairs: int = MAX_PAIRS, side: int = THUMB_SIDE) -> str:
    """The report's HTML (see the module docstring); ``found``: the misclassified rows, if known."""
    from pipeline.plots import plot_accuracy_matrix, plot_confusion, plot_learning_curve

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sections = [f'<section id="settings"><h2>Settings and data</h2>{_settings(metrics)}</section>',
                f'<section id="summary"><h2>Results</h2>{_summary(metrics)}</section>']
    curve = metrics.get("learning_curve") or []
    if curve:
        note = ("" if len(curve) > 1 else
                '<p class="muted">One evaluation point: pass --eval-every N (or --plot / --log-dir) for a curve.</p>')
        sections.append(f'<section id="learning-curve"><h2>Learning curve</h2>{_figure(plot_learning_curve, metrics)}'
                        f"{note}</section>")
    if metrics.get("accuracy_matrix"):
        forgetting = class_forgetting(metrics)
        table = (_table(["class", "task", "accuracy when learnt", "best before the last task", "final", "forgetting"],
                        forgetting) if forgetting else "")
        sections.append(f'<section id="accuracy-matrix"><h2>Accuracy matrix and forgetting</h2>'
                        f"{_figure(plot_accuracy_matrix, metrics)}{table}</section>")
    held = metrics.get("heldout") or {}
    if held.get("rows"):
        sections.append(f'<section id="confusion"><h2>Held-out confusion matrix</h2>'
                        f"{_figure(plot_confusion, metrics)}</section>")
        sections.append(f'<section id="per-class"><h2>Per-class precision and recall</h2>{_per_class(metrics)}'
                        "</section>")
    if found is not None:
        sections.append(f'<section id="misclassified"><h2>Misclassified held-out photos</h2>'
                        f'<p class="muted">The most confused class pairs; in each, the mistakes made with the '
                        f"highest probability.</p>{_mistakes(found, pairs, side)}</section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            f'<h1>{_e(title)}</h1><p class="muted">{_e(metrics.get("head", ""))} &middot; written {created} by '
            f"incremental-pipeline</p>{''.join(sections)}</body></html>\n")


def write_report(path: str | Path, metrics: dict[str, Any], *, head: Head | None = None,
                 test: FeatureStream | None = None, title: str = "Run report", pairs: int = MAX_PAIRS,
                 per_pair: int = PER_PAIR, side: int = THUMB_SIDE) -> Path:
    """Write the report of a run (``metrics`` of ``train`` or ``evaluate``) to ``path`` (atomically);
    with ``head`` and ``test``, the misclassified held-out photos too."""
    found = find_mistakes(head, test, per_pair) if head is not None and test is not None else None
    text = render(metrics, found, title=title, pairs=pairs, side=side)
    return write_atomically(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")))
