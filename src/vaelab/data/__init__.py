"""Data: IDX reading, the data set registry, in-memory batching."""

from vaelab.data.batches import Batch, Batches, binarize_fixed, to_unit_float
from vaelab.data.datasets import (
    ImageDataset,
    describe_datasets,
    load_dataset,
    register,
    register_idx_folder,
    register_npz,
    registered_names,
)
from vaelab.data.idx import parse_idx, read_idx, write_idx

__all__ = [
    "Batch",
    "Batches",
    "ImageDataset",
    "binarize_fixed",
    "describe_datasets",
    "load_dataset",
    "parse_idx",
    "read_idx",
    "register",
    "register_idx_folder",
    "register_npz",
    "registered_names",
    "to_unit_float",
    "write_idx",
]
