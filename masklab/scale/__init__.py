"""Beyond one machine: Dask tiles for all-pairs distances (tiles.py); sharded generation through submitit
(shards.py, executors.py). Imported lazily: `import masklab` does not import dask or submitit."""
