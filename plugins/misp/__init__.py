"""misp-modules expansion module for telfhash."""
