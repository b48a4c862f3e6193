"""Data path: index -> decoded uint8 cache -> batches. See each module's docstring."""
from .cache import DecodedImages, load_images
from .index import SampleTable, load_index
from .noise import NoisyLabels, inject_noise

__all__ = ["SampleTable", "load_index", "DecodedImages", "load_images", "NoisyLabels", "inject_noise"]
