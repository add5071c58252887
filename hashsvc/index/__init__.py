"""In-memory indexes: PDQ multi-index, binary FAISS indexes, audio, the live view."""
