"""An Assemblyline 4 service that adds telfhash to ELF triage (see docs/assemblyline.md).

* :mod:`.analysis` -- the work for one file, free of Assemblyline's classes: settings, hashing
  under a time budget, the nearest samples of a telfhash-core index;
* :mod:`.service` -- the service class (``SERVICE_PATH=telfhash_plugins.assemblyline.service.Telfhash``)
  that turns it into Assemblyline result sections, tags and heuristics;
* ``service_manifest.yml`` and ``Dockerfile`` -- what an Assemblyline deployment builds and loads.

Importing this package does not import Assemblyline; :mod:`.service` needs the ``assemblyline``
extra (``pip install -e '.[assemblyline]'`` in a clone).
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("service_manifest.yml")
SERVICE_PATH = "telfhash_plugins.assemblyline.service.Telfhash"

__all__ = ["MANIFEST", "SERVICE_PATH"]
