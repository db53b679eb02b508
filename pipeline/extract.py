"""The extraction entry point; the work lives in :mod:`pipeline.extraction` (plan, partition, executors, finalize)."""

from pipeline.extraction import ExtractResult, LocalExecutor, extract_features
from pipeline.extraction.plan import extraction_settings, file_order, package_versions

__all__ = ["extract_features", "ExtractResult", "LocalExecutor", "extraction_settings", "file_order",
           "package_versions"]
