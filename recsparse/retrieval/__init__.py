"""Retrieval: encoder -> index -> searcher -> evaluation, one search vocabulary across Lucene and FAISS."""
