"""Training: the trainer, weight recycling (IWR, IteRand) and evaluation."""

from masklab.train.evaluate import evaluate, evaluate_batches
from masklab.train.trainer import TrainedMask, make_model, resolve_device, train_mask

__all__ = ["TrainedMask", "evaluate", "evaluate_batches", "make_model", "resolve_device", "train_mask"]
