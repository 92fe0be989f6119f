"""Datasets held in memory as torch tensors; nothing is downloaded at run time.

dataset.py: the `Dataset` (batches, augmentation) and what other code asks of one; readers.py: the file
formats (IDX, CIFAR-10 pickles); builtin.py: the datasets by name (`load_dataset`, the DATASETS registry,
where their files are looked for).
"""

from masklab.data.builtin import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    ENV_ROOT,
    SYNTHETIC_SHAPE,
    dataset_names,
    load_config_dataset,
    load_dataset,
    synthetic_shape,
)
from masklab.data.dataset import CIFAR_PAD, Batches, Dataset, Shaped, crop_flip, epoch_seed, random_crop_flip
from masklab.data.readers import IDX_FILES, read_cifar_batch, read_idx

__all__ = ["CIFAR_PAD", "DATASETS", "DEBIAN_FASHION_MNIST", "ENV_ROOT", "IDX_FILES", "SYNTHETIC_SHAPE", "Batches",
           "Dataset", "Shaped", "crop_flip", "dataset_names", "epoch_seed", "load_config_dataset", "load_dataset",
           "random_crop_flip", "read_cifar_batch", "read_idx", "synthetic_shape"]
