"""Data: IDX reading, the data set registry (with generated data sets that have factors), in-memory batching."""

from vaelab.data import dsprites  # noqa: F401  (registers dsprites and its variants)
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
from vaelab.data.factors import Factor, FactorGrid, FactorImages
from vaelab.data.idx import parse_idx, read_idx, write_idx

__all__ = [
    "Batch",
    "Batches",
    "Factor",
    "FactorGrid",
    "FactorImages",
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
