"""ComfyUI entry point of the V-Express node pack (ComfyUI >= 0.3.48: nodes on comfy_api's io.ComfyNode).

ComfyUI imports this folder by path as a package and calls `comfy_entrypoint`; the nodes are
imported relatively. The pack's core library (`vexpress_core`, no ComfyUI imports) is made
importable from this folder when it is not installed as a package.
"""
import importlib.util
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_NAME = "vexpress_pack"
try:
    import vexpress_core  # noqa: F401  (installed, or already on the path)
except ImportError:
    sys.path.append(_PACK_DIR)

if __package__:
    from .nodes import NODES, comfy_entrypoint  # noqa: E402
else:  # imported as a plain module (e.g. by a tool): load this folder as a package, as ComfyUI does
    _pack = sys.modules.get(_PACKAGE_NAME)
    if _pack is None:
        _spec = importlib.util.spec_from_file_location(_PACKAGE_NAME, os.path.join(_PACK_DIR, "__init__.py"),
                                                       submodule_search_locations=[_PACK_DIR])
        _pack = importlib.util.module_from_spec(_spec)
        sys.modules[_PACKAGE_NAME] = _pack
        _spec.loader.exec_module(_pack)
    NODES, comfy_entrypoint = _pack.NODES, _pack.comfy_entrypoint

__all__ = ["NODES", "comfy_entrypoint"]
