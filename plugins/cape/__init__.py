"""telfhash for sandbox reports: a CAPEv2 processing module (and a Cuckoo 3 post-processing
equivalent) adding the telfhash of every ELF file to the report, with the groups among the
analysis' ELF files and, with an index configured, the nearest known samples.

* :mod:`.enrich` -- ``enrich.enrich(results, settings, analysis_path)``: the work, on a results dict;
* :mod:`.install` -- the thin module file and ``[telfhash]`` drop-in written into a CAPE tree;
* :mod:`.cli` -- ``telfhash-cape install | uninstall | status | reprocess``;
* :mod:`.cuckoo3` -- ``TelfhashProcessor`` for Cuckoo 3;
* :mod:`.worker` -- hashing in a (reused) worker process, each file within its limit and the
  analysis' deadline;
* :mod:`.env` -- the pyelftools/capstone/TLSH versions CAPE's environment offers, and verdicts;
* :mod:`.ui` -- ``install --ui``: telfhash in CAPE's templates and search (marked, revertible).

See ``docs/cape.md``.
"""

from . import enrich
from .enrich import KEY, Settings, file_dicts, run_module

__all__ = ["KEY", "Settings", "enrich", "file_dicts", "run_module"]
