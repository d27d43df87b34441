"""Command layer: the ``telfhash`` subcommands, each a built-in plugin.

Every module here implements ``telfhash_commands`` (argparse sub-parsers and the functions they
run) on top of the domain layers (hashing, similarity, store, batch) and is registered in
:data:`telfhash_core.plugins.DEFAULT_PLUGINS` exactly as a third-party plugin would be.  No
domain module imports anything from here.
"""
