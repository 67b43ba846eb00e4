"""Reproducible operators (SPEC.md §10).

Each op is defined by a hardware-independent program over correctly rounded IEEE-754
operations, or by exact accumulation whose result does not depend on summation order.
``gpu_ops.ref`` is the plain-torch oracle; fast paths must equal it bit for bit.
"""

OPS_VERSION = 1
