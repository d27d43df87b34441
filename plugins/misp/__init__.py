"""misp-modules expansion and hover modules for telfhash.

* :mod:`.module` -- the host contract: what MISP sends (enrichment, bulk enrichment, hover), the
  answer (a file object merged into the sample's own, known neighbours), errors vs nothing to add;
* :mod:`.expansion`, :mod:`.hover` -- the names misp-modules looks for in a module file
  (``mispattributes``, ``moduleinfo``, ``moduleconfig``, ``introspection``, ``version``,
  ``handler``, ``dict_handler``);
* :mod:`.sample` -- the sample out of base64 and MISP's encrypted ZIP, streamed and bounded;
* :mod:`.zipcrypto` -- the compiled ZipCrypto decrypter;
* :mod:`.known` -- what the local index knows (lookup by hash, nearest samples);
* :mod:`.cli` -- ``telfhash-misp-modules``: starts :mod:`.server` (misp-modules' own server with
  only these modules) and prints one line when they are listed.

See docs/misp.md.
"""
