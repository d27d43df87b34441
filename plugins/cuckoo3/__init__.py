"""telfhash for Cuckoo 3 (cert-ee/cuckoo3): the telfhash of every submitted ELF file (the
identified target, also inside archives) in ``pre.json`` and of every dropped ELF file in each
task's ``report.json``, with the groups among them and, with an index configured, the nearest
known samples; shown in Cuckoo's web interface.

* :mod:`.processor` -- the host contract: pre- and post-stage processors and the reporter;
* :mod:`.config` -- ``conf/processing/telfhash.yaml``, declared with Cuckoo's typeloaders;
* :mod:`.install` -- the drop-in modules, settings file and web hook, and their status;
* :mod:`.web` -- the Jinja2 environment wrapper behind the web hook;
* :mod:`.cli` -- ``telfhash-cuckoo3 install | status | uninstall``.

The hashing and the result's shape are those of the CAPEv2 adapter (``telfhash_plugins.cape``).
See ``docs/cuckoo3.md``.
"""

from .config import CONF_NAME, load

__all__ = ["CONF_NAME", "load"]
