"""A local TAXII 2.1 server for trying the exchange out: medallion with its memory backend, one
readable and writable collection, listening on 127.0.0.1 only.  Not for production (medallion
says so itself): the data lives in memory and is gone when the server stops.

    TELFHASH_TAXII_USER=alice TELFHASH_TAXII_PASSWORD=... telfhash stix serve --port 8000
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid

# Fixed, so the collection URL is the same at every start.
COLLECTION_ID = str(uuid.uuid5(uuid.UUID("5c0d981b-1f1b-40b9-9e26-5e3f28f2c83c"), "telfhash clusters"))
API_ROOT = "telfhash"


def collection_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/{API_ROOT}/collections/{COLLECTION_ID}/"


def write_config(folder: str, host: str, port: int, user: str, password: str) -> str:
    """medallion's data and config files in ``folder``; returns the config path."""
    api = f"http://{host}:{port}/{API_ROOT}/"
    data = {
        "/discovery": {
            "title": "telfhash-core local TAXII server",
            "description": "medallion, memory backend: the data is gone when the server stops",
            "contact": "localhost",
            "default": api,
            "api_roots": [api],
        },
        API_ROOT: {
            "information": {
                "title": "telfhash",
                "description": "telfhash clusters as STIX 2.1",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 256 * 1024 * 1024,
            },
            "status": [],
            "collections": [
                {
                    "id": COLLECTION_ID,
                    "title": "telfhash clusters",
                    "description": "bundles from telfhash stix export",
                    "can_read": True,
                    "can_write": True,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": [],
                    "manifest": [],
                }
            ],
        },
    }
    data_path = os.path.join(folder, "data.json")
    with open(data_path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    config = {
        "backend": {"module": "medallion.backends.memory_backend", "module_class": "MemoryBackend", "filename": data_path},
        "users": {user: password},
        "taxii": {"max_page_size": 1000},
    }
    config_path = os.path.join(folder, "config.json")
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(config, fh)
    return config_path


def serve(port: int, user: str, password: str, host: str = "127.0.0.1") -> int:
    """Run medallion in the foreground until it is stopped (Ctrl-C); returns its exit status."""
    try:
        import medallion  # noqa: F401
    except ImportError:
        raise RuntimeError("medallion is not installed: pip install 'telfhash-core[stix]'") from None
    def _stop(signum, frame):  # SIGTERM: stop medallion and remove the config (it holds the password)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    with tempfile.TemporaryDirectory(prefix="telfhash-taxii-") as folder:
        config = write_config(folder, host, port, user, password)
        print(f"TAXII 2.1 collection: {collection_url(host, port)}", flush=True)
        print("stop with Ctrl-C; the data lives in memory only", flush=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "medallion.scripts.run", "--host", host, "--port", str(port), config],
            stdin=subprocess.DEVNULL,
        )
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return 0
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
