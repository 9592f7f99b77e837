"""How labkit writes numbers: the byte units every module shares.

Binary units (GiB, MiB) are what memory is allocated and reported in (torch, nvidia-smi, the
estimates); decimal ones (GB) are what vendors print on the box and what prices are quoted per.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024**2
GIB = 1024**3
GB = 1e9
