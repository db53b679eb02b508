"""Out-of-core, incremental image classification on frozen CNN features.

Data flows one way: images -> backbone -> feature store -> stream -> heads
-> evaluation; :mod:`pipeline.cli` sits on top.
"""

__version__ = "0.1.0"
