"""What ``telfhash-cuckoo3 install`` writes, where, and how it is checked and undone.

Cuckoo 3 runs only plugin classes defined in modules of its own packages
(``cuckoo.processing.pre``, ``.post``, ``.reporting``; see ``processor``), so three drop-in
modules of a few lines go into those package folders of the *installed* Cuckoo (the interpreter
running this code must be Cuckoo's).  Everything else lives in the Cuckoo working directory and
survives Cuckoo upgrades: the settings file ``conf/processing/telfhash.yaml`` (rendered with
Cuckoo's own renderer) and a marked block in ``web/web_local_settings.py`` for the web interface.

A Cuckoo upgrade that reinstalls ``Cuckoo-processing`` into a new location (a new virtual
environment, a fresh checkout) loses the drop-ins: ``telfhash-cuckoo3 status`` says so (exit
status 1) and ``install`` puts them back; it is idempotent and keeps the settings file.  Every
file written carries :data:`MARKER`; files without it are never overwritten or removed.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import config

log = logging.getLogger(__name__)

MARKER = "# telfhash-core drop-in (telfhash-cuckoo3 install); remove with: telfhash-cuckoo3 uninstall"
MODULE_NAME = "telfhash.py"

# package -> (class name, base class in telfhash_plugins.cuckoo3.processor)
DROPINS: dict[str, tuple[str, str]] = {
    "cuckoo.processing.pre": ("Telfhash", "TelfhashPre"),
    "cuckoo.processing.post": ("TelfhashDropped", "TelfhashPost"),
    "cuckoo.processing.reporting": ("TelfhashJSON", "TelfhashReporter"),
}

_DROPIN = '''{marker}
"""telfhash-core for Cuckoo 3 ({package}): the class Cuckoo runs is defined here, in Cuckoo's plugin
package, because Cuckoo keeps only classes defined in its own plugin modules.  If telfhash-core
is missing from this environment, the plugin is skipped and Cuckoo runs on."""
import logging as _logging

try:
    from telfhash_plugins.cuckoo3 import processor as _telfhash
except ImportError as _exc:
    _logging.getLogger(__name__).warning("telfhash plugin skipped: %s", _exc)
else:

    class {cls}(_telfhash.{base}):
        pass
'''

WEB_BEGIN = "# BEGIN telfhash-core (telfhash-cuckoo3 install)"
WEB_END = "# END telfhash-core"
_WEB_BLOCK = f"""{WEB_BEGIN}
try:
    from telfhash_plugins.cuckoo3.web import configure as _telfhash_configure

    _telfhash_configure(globals())
except ImportError:
    pass
{WEB_END}
"""


def dropin_text(package: str) -> str:
    cls, base = DROPINS[package]
    return _DROPIN.format(marker=MARKER, package=package, cls=cls, base=base)


def package_dir(package: str) -> Path:
    """The folder of an installed Cuckoo package (``ImportError`` if Cuckoo 3 is not installed)."""
    mod = importlib.import_module(package)
    f = getattr(mod, "__file__", None)
    if not f:
        raise ImportError(f"{package} has no folder")
    return Path(f).parent


def _dropin_paths(items: list) -> Iterator[tuple[str, Path]]:
    """``(package, path of our drop-in)`` for each Cuckoo package that takes one; a package that
    cannot be imported becomes an error item instead."""
    for package in DROPINS:
        try:
            yield package, package_dir(package) / MODULE_NAME
        except ImportError as exc:
            items.append(Item(f"drop-in {package}", "-", f"error: Cuckoo 3 is not importable here ({exc})"))


def default_cwd() -> Path:
    """Cuckoo's default working directory: ``$CUCKOO_CWD`` or ``~/.cuckoocwd``."""
    try:
        from cuckoo.common.storage import cuckoocwd  # type: ignore[import-not-found]

        return Path(cuckoocwd.DEFAULT)
    except ImportError:
        return Path(os.environ.get("CUCKOO_CWD") or Path.home() / ".cuckoocwd")


def _ours(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().rstrip("\n") == MARKER
    except OSError:
        return False


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.telfhash-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class Item:
    what: str
    path: str
    state: str  # "installed", "written", "kept", "missing", "foreign", "removed", "absent", "error: ..."

    def ok(self) -> bool:
        return self.state in ("installed", "written", "kept", "removed", "absent", "unchanged")


def install(
    cwd: str | os.PathLike | None = None,
    *,
    web: bool = True,
    values: dict[str, Any] | None = None,
    overwrite_config: bool = False,
) -> list[Item]:
    """Write the drop-ins, the settings file (unless present) and the web block."""
    items: list[Item] = []
    for package, path in _dropin_paths(items):
        text = dropin_text(package)
        if path.exists() and not _ours(path):
            items.append(Item(f"drop-in {package}", str(path), "foreign"))
            continue
        if path.exists() and path.read_text(encoding="utf-8") == text:
            items.append(Item(f"drop-in {package}", str(path), "unchanged"))
            continue
        try:
            _write(path, text)
            items.append(Item(f"drop-in {package}", str(path), "written"))
        except OSError as exc:
            items.append(Item(f"drop-in {package}", str(path), f"error: {exc}"))

    root = Path(cwd) if cwd is not None else default_cwd()
    if not (root / ".cuckoocwd").is_file():
        items.append(Item("settings", str(root), "error: not a Cuckoo working directory (run 'cuckoo createcwd')"))
        return items
    conf = config.conf_path(root)
    assert conf is not None
    try:
        if conf.exists() and overwrite_config:
            conf.unlink()
        if conf.exists():
            items.append(Item("settings", str(conf), "kept"))
        else:
            config.render(root, values)
            items.append(Item("settings", str(conf), "written"))
    except Exception as exc:  # noqa: BLE001 -- a host plugin reports, never raises
        items.append(Item("settings", str(conf), f"error: {exc}"))
    if web:
        items.append(_install_web(root))
    return items


def _web_settings(root: Path) -> Path:
    return root / "web" / "web_local_settings.py"


_WEB_RE = re.compile(re.escape(WEB_BEGIN) + r".*?" + re.escape(WEB_END) + r"\n?", re.DOTALL)


def _install_web(root: Path) -> Item:
    path = _web_settings(root)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if _WEB_RE.search(text):
            new = _WEB_RE.sub(lambda _m: _WEB_BLOCK, text)
            state = "unchanged" if new == text else "written"
        else:
            new = text + ("" if not text or text.endswith("\n") else "\n") + _WEB_BLOCK
            state = "written"
        if new != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, new)
        return Item("web", str(path), state)
    except OSError as exc:
        return Item("web", str(path), f"error: {exc}")


def uninstall(cwd: str | os.PathLike | None = None, *, purge: bool = False) -> list[Item]:
    """Remove the drop-ins (only ours) and the web block; the settings file too with ``purge``."""
    items: list[Item] = []
    for package, path in _dropin_paths(items):
        if not path.exists():
            items.append(Item(f"drop-in {package}", str(path), "absent"))
        elif not _ours(path):
            items.append(Item(f"drop-in {package}", str(path), "foreign"))
        else:
            path.unlink()
            items.append(Item(f"drop-in {package}", str(path), "removed"))
    root = Path(cwd) if cwd is not None else default_cwd()
    web = _web_settings(root)
    if web.exists():
        text = web.read_text(encoding="utf-8")
        new = _WEB_RE.sub("", text)
        if new != text:
            _write(web, new)
            items.append(Item("web", str(web), "removed"))
        else:
            items.append(Item("web", str(web), "absent"))
    conf = config.conf_path(root)
    if purge and conf is not None and conf.exists():
        conf.unlink()
        items.append(Item("settings", str(conf), "removed"))
    return items


def status(cwd: str | os.PathLike | None = None) -> list[Item]:
    """What is in place; an item not ``installed`` needs ``install`` again."""
    items: list[Item] = []
    for package, path in _dropin_paths(items):
        if not path.exists():
            state = "missing"
        elif not _ours(path):
            state = "foreign"
        elif path.read_text(encoding="utf-8") != dropin_text(package):
            state = "outdated"
        else:
            state = "installed"
        items.append(Item(f"drop-in {package}", str(path), state))
    root = Path(cwd) if cwd is not None else default_cwd()
    conf = config.conf_path(root)
    if conf is not None and conf.exists():
        _settings, _dropped, errors = config.load(conf)
        items.append(Item("settings", str(conf), "installed" if not errors else "error: " + "; ".join(errors)))
    else:
        items.append(Item("settings", str(conf), "missing (defaults apply)"))
    web = _web_settings(root)
    has = web.exists() and bool(_WEB_RE.search(web.read_text(encoding="utf-8")))
    items.append(Item("web", str(web), "installed" if has else "missing"))
    return items


__all__ = ["DROPINS", "MARKER", "Item", "default_cwd", "dropin_text", "install", "package_dir", "status", "uninstall"]
