"""Hashing layer: ELF bytes -> telfhash, exactly as the reference computes it.

``elf`` reads symbol tables, ``fallback`` sweeps code for call destinations, ``api`` is the
file/path/pool front door.  Nothing here knows about similarity, storage or the CLI.
"""
