"""misp-modules contract of the ``telfhash_hover`` module: what the index knows, within MISP's 5 s."""

from __future__ import annotations

from . import module as _m

mispattributes = _m.mispattributes()
moduleinfo = _m.module_info(hover=True)
moduleconfig = list(_m.CONFIG_HOVER)


def dict_handler(request):
    """Answer a parsed request. Never raises (an escaping AttributeError would re-run the request)."""
    return _m.expand(request, hover=True)


def handler(q=False):
    """Answer a request given as JSON text or bytes."""
    return _m.handle_json(q, hover=True)


def introspection():
    return mispattributes


def version():
    moduleinfo["config"] = moduleconfig
    return moduleinfo
