"""misp-modules' own server, loading only the telfhash modules.

``misp-modules -c ROOT`` always imports its ~176 bundled modules before the custom ones in ROOT:
8-11 s, about a hundred warnings for missing optional libraries, and some 250 MiB at rest, for
two modules.  This runs the same server (``misp_modules.__main__.main``: the same HTTP
handlers, thread pool, custom-module loader and log lines) with the bundled module folder left
out of its module walk.  If misp-modules' internals ever change shape, it runs unchanged (all
modules) with a warning, rather than not at all.

    python -m telfhash_plugins.misp.server -l 127.0.0.1 -p 6666 -c ROOT [-d]

``telfhash-misp-modules`` (:mod:`.cli`) writes ROOT, runs this, and says when it is ready.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("telfhash.misp")


def only_custom_modules() -> bool:
    """Make misp-modules skip its bundled modules; False when its internals are not as expected."""
    try:
        import importlib.resources

        import misp_modules
        import misp_modules.__main__ as mm

        bundled = importlib.resources.files("misp_modules").joinpath(misp_modules.MODULES_DIR)
        walk = misp_modules.iterate_modules
        if not callable(walk) or not callable(getattr(mm, "warn_if_degraded", None)):
            return False
    except Exception:  # noqa: BLE001 - not the misp-modules we know: run it as it is
        return False

    def iterate_modules(modules_dir):
        if str(modules_dir) == str(bundled):
            return iter(())
        return walk(modules_dir)

    misp_modules.iterate_modules = iterate_modules
    # "install misp-modules[all]" is about the bundled modules, which are not loaded here
    mm.warn_if_degraded = lambda: None  # type: ignore[attr-defined]
    return True


def main(argv: list[str] | None = None) -> int:
    import misp_modules.__main__ as mm

    if not only_custom_modules():
        print("telfhash-misp-modules: unexpected misp-modules internals; loading all its modules", file=sys.stderr)
    sys.argv = ["misp-modules"] + list(sys.argv[1:] if argv is None else argv)
    return mm.main() or 0


if __name__ == "__main__":
    sys.exit(main())
