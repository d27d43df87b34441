"""Storage layer: the local SQLite similarity index of known samples."""
