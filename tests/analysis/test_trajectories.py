import numpy as np
import pandas as pd

import masklab
from masklab.analysis.trajectories import settling, trajectories
from masklab.data import load_dataset


def test_trajectories_from_snapshots(tmp_path):
    run = masklab.generate(runs_dir=tmp_path, data=load_dataset("digits"), masks=3, epochs=4, width=0.25,
                           snapshot_every=1)
    traj = trajectories(run)
    assert sorted(set(traj["epoch"])) == [0, 1, 2, 3] and sorted(set(traj["mask_id"])) == [0, 1, 2]
    final = traj[traj["epoch"] == 3]
    assert (final["distance_to_final"] == 0).all()
    assert traj["distance_to_final"].between(0, 1).all() and traj["distance_to_others"].between(0, 1).all()
    # against a direct computation from unpacked bits
    snap = run.snapshots(1)
    direct = np.mean(snap.unpack(0) != run.masks.unpack(1))
    assert traj.query("mask_id == 1 and epoch == 0")["distance_to_final"].item() == direct
    others = [np.mean(run.snapshots(1).unpack(2) != run.snapshots(j).unpack(2)) for j in (0, 2)]
    assert np.isclose(traj.query("mask_id == 1 and epoch == 2")["distance_to_others"].item(), np.mean(others))


def test_settling_epoch():
    traj = pd.DataFrame({"mask_id": [0] * 4 + [1] * 4, "epoch": [0, 1, 2, 3] * 2,
                         "distance_to_final": [0.3, 0.005, 0.02, 0.0, 0.2, 0.1, 0.001, 0.0]})
    out = settling(traj, tolerance=0.01).set_index("mask_id")["settled_epoch"]
    assert out[0] == 3 and out[1] == 2
