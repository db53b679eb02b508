"""Out-of-core, incremental image classification on frozen CNN features.

Data flows one way: images -> backbone -> feature store -> stream -> heads
-> evaluation; :mod:`pipeline.cli` sits on top.

Importing it has no side effect: the variables TensorFlow reads (its CPU kernels, its logs) are set by
:func:`pipeline.keras_runtime.prepare_environment` just before Keras is imported.
"""

__version__ = "0.1.0"
