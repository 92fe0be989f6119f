"""masklab: the mask landscape of randomly initialised neural networks."""

__version__ = "0.1.0"
