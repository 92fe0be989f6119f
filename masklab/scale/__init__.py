"""Beyond one machine: sharded generation through submitit (executors.py; the shard rule: store/shards.py;
Dask tiles for all-pairs distances: analysis/tiles.py). Imported lazily: `import masklab` does not import
submitit."""
