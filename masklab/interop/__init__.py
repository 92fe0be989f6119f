"""Masks from elsewhere, and back (docs/interop.md).

`masklab.import_masks(paths, format=...)` makes a run from checkpoints of hidden-networks / Biprop / the IWR code,
from `torch.nn.utils.prune` state or from .npz masks (importer.py; one module per format: hidden_networks.py,
torch_prune.py, npz.py; safe loading: checkpoint.py; the reference keep rule: rules.py).
`masklab.export_mask(run, i, format, path)` writes any stored mask back as a plain PyTorch state dict,
torch-prune state, a hidden-networks checkpoint or an .npz, and `masklab.plain_model(run, i)` builds the
subnetwork from plain torch.nn layers (exporter.py).
"""
