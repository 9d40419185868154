"""ComfyUI entry point of the V-Express node pack.

ComfyUI imports this folder by path as a package; the nodes are imported relatively. The pack's
core library (`vexpress_core`, no ComfyUI imports) is made importable from this folder when it is
not installed as a package.
"""
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
try:
    import vexpress_core  # noqa: F401  (installed, or already on the path)
except ImportError:
    sys.path.append(_PACK_DIR)

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:  # imported as a plain module, e.g. by pytest when the checkout folder is not a valid package name
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
