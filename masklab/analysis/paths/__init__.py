"""Paths between two masks of one run, in rooms of their own (the API is `masklab.analysis.interpolation`):

- `geometry`: the ends (`Subnet`) and the points of the soft, hamming and score paths (`path_points`);
- `evaluation`: the fixed evaluation set, BatchNorm recompute and `PathEvaluator` (one model, many paths);
- `sources`: where the ends come from (`MaskSource`, a Protocol: a stored run or masks trained in memory);
- `barriers`: loss and error barriers of a curve and their correlation with distance (numpy and pandas only).

Nothing is imported here, so that `masklab.analysis.paths.barriers` stays free of torch.
"""
