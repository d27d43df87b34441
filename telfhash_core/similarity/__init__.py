"""Similarity layer: exact TLSH distances in bulk (``tlshdist``) and grouping (``cluster``)."""
