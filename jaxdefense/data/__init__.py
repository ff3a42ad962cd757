"""Datasets as float32 NHWC arrays in [0, 1] with int32 labels."""
from jaxdefense.data.batches import crop_flip, padded_batches, train_batches
from jaxdefense.data.sources import (DATASETS, Dataset, DatasetError, dataset_info, load,
                                     parse_split, read_idx)

__all__ = ["DATASETS", "Dataset", "DatasetError", "dataset_info", "load", "parse_split",
           "read_idx", "crop_flip", "padded_batches", "train_batches"]
