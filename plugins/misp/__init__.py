"""misp-modules expansion and hover modules for telfhash.

* :mod:`.module` -- the logic: decode MISP's malware-sample ZIP / attachment, hash, build MISP
  ``file`` objects, pivot through the local index;
* :mod:`.expansion`, :mod:`.hover` -- the misp-modules contract (``mispattributes``, ``moduleinfo``,
  ``moduleconfig``, ``introspection``, ``version``, ``handler``, ``dict_handler``);
* :mod:`.server` -- ``telfhash-misp-modules``: runs ``misp-modules -c ROOT`` with both modules.

See docs/misp.md.
"""
