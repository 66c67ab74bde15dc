"""recsparse.models."""
