"""recsparse.kernels."""
