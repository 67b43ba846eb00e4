"""pol: proof-of-learning validator network (command line and Python API)."""

__version__ = "0.1.0"
