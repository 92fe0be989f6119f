"""Training: the one training path (K masks at a time), weight recycling (IWR, IteRand), evaluation."""

from masklab.train.device import resolve_device
from masklab.train.evaluate import Evaluation, evaluate, evaluate_batches
from masklab.train.stacked import make_model
from masklab.train.trainer import TrainedMask, TrainingDiverged, train_mask, train_masks

__all__ = ["Evaluation", "TrainedMask", "TrainingDiverged", "evaluate", "evaluate_batches", "make_model",
           "resolve_device", "train_mask", "train_masks"]
