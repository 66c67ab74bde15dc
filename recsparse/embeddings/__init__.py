"""recsparse.embeddings."""
