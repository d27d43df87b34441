"""Storage layer: the local SQLite similarity index of known samples."""

# What an index search can compare: the field's name -> the column holding its packed digest.
# Here (not in index.py) so that the command line can offer the choices without loading NumPy.
SEARCH_KEYS = {"telfhash": "digest", "telfhash_x": "digest_x"}
