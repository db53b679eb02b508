"""Extract only new files: drop from a listing what earlier stores already hold.

``extract-features SRC -o new.h5 --exclude old.h5`` lists SRC as usual, then
removes every entry whose recorded path is among the rows *or the skipped
files* of the excluded stores (a file skipped before was seen; it is not
new). Paths are relative to the source root, so a store is only comparable
when it was made from the same resolved root; another root is refused.

The filter works on the listing alone, before extraction: the filtered
listing has its own digest, so a partial run resumed with an ``--exclude``
that changes what is left is refused like any changed source. Memory: the
listing's paths plus one chunk of a store's paths at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Sequence

from pipeline.errors import StoreError
from pipeline.images import ImageSource
from pipeline.store import FeatureStore


@dataclass
class Exclusion:
    """The listing left to extract, and how many entries the stores already held."""

    source: ImageSource
    excluded: int


def _check_root(store: FeatureStore, root: Path) -> None:
    recorded = str(store.meta.get("source_root", "") or "")
    if not recorded:
        raise StoreError(f"{store.path} records no source_root, so its paths cannot be matched to {root}")
    if Path(recorded).resolve() != root:
        raise StoreError(f"{store.path} was made from {recorded}, not from {root}: its relative paths would name "
                         "other files; --exclude only takes stores extracted from the same source")


def exclude_stored(source: ImageSource, stores: Sequence[str | Path]) -> Exclusion:
    """``source`` without the entries whose paths are in ``stores`` (rows or skipped files).

    Raises :class:`StoreError` for a store that is incomplete, unreadable or
    made from another source root.
    """
    root = source.root.resolve()
    position = {path: i for i, path in enumerate(source.paths)}
    done: set[int] = set()
    for path in stores:
        with FeatureStore(path) as store:
            if not store.complete:
                raise StoreError(f"{path} is incomplete (its extraction did not finish); finish it before "
                                 "excluding its files")
            _check_root(store, root)
            for recorded in chain(store.iter_paths(), store.iter_skipped_paths()):
                i = position.get(recorded)
                if i is not None:
                    done.add(i)
    keep = [i for i in range(len(source.paths)) if i not in done]
    return Exclusion(source.subset(keep) if done else source, len(done))
