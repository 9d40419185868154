"""`python training {prepare,train} ...` from a clone, `python -m vexpress_training {prepare,train} ...`
when the pack is installed (pip installs this folder as `vexpress_training`).

The folder is only ever imported as `vexpress_training`: a bare top-level `training` could clash with
another package of that name, as the pack's `nodes` folder would with ComfyUI's core `nodes`.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = "vexpress_training"
COMMANDS = {"prepare": ("prepare", "main"), "train": ("train", "cli"), "toy": ("toy.cli", "main")}


def training_package() -> str:
    """The import name of this folder, registering it as `vexpress_training` when it is not installed.

    Run as a script, Python puts this folder itself on sys.path; it is taken off again (its module
    names are not top-level names), and the clone's root is appended so `vexpress_core` imports."""
    if PACKAGE in sys.modules or importlib.util.find_spec(PACKAGE) is not None:
        return PACKAGE
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    if importlib.util.find_spec("vexpress_core") is None:
        sys.path.append(str(here.parent))
    spec = importlib.util.spec_from_file_location(PACKAGE, here / "__init__.py", submodule_search_locations=[str(here)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return PACKAGE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python training {{{','.join(COMMANDS)}}} ...  (installed: python -m {PACKAGE} ...)", file=sys.stderr)
        return 2
    module_name, function = COMMANDS[argv[0]]
    module = importlib.import_module(f"{training_package()}.{module_name}")
    result = getattr(module, function)(argv[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
