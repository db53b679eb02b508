"""Out-of-core, incremental image classification on frozen CNN features.

Data flows one way: images -> backbone -> feature store -> stream -> heads
-> evaluation; :mod:`pipeline.cli` sits on top.
"""

# First, before anything can import TensorFlow: chooses its CPU kernels (TF_ENABLE_ONEDNN_OPTS).
from pipeline import keras_runtime as _keras_runtime  # noqa: F401,E402

__version__ = "0.1.0"
