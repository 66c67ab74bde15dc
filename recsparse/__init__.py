"""recsparse: recommendation and retrieval with sparse embeddings.

Data flow: ``data`` (registry, loaders) -> ``embeddings`` (id-mapper -> TorchRec table) -> ``models`` -> ``pipelines``,
and beside it ``retrieval`` (encoder -> index -> searcher -> evaluation). Subpackages are imported lazily so that
``import recsparse`` stays cheap (torch, the JVM and FAISS load only when used).
"""

__version__ = "0.1.0"
