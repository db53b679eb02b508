"""Heads: incremental classifiers on feature arrays, one small file each.

``make_head(name, **options)`` builds one by name from the registry
(:mod:`pipeline.heads.registry`); every head implements
:class:`pipeline.heads.base.Head`.
"""

from __future__ import annotations

from pipeline.heads.base import Head
from pipeline.heads.registry import Capabilities, Option, head_class, heads, make_head, register

__all__ = ["Head", "Capabilities", "Option", "head_class", "heads", "make_head", "register"]
