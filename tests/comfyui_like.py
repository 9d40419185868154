"""How ComfyUI (v0.3.48 - v0.3.64) loads and runs the pack, reproduced for the tests (CI has no ComfyUI).

- `load_pack`: nodes.load_custom_node - the checkout imported by path as a package whose name is
  the folder's path, so the pack never becomes the bare top-level `nodes` (ComfyUI's own module).
- `validate` / `execute`: execution.validate_inputs and execution.execute for a V3 node - widget
  values converted and range-checked (not for inputs named by validate_inputs; COMBO values are not
  checked against their options for V3 nodes), validate_inputs called with only the inputs its
  signature names, then execute; an exception becomes the error the UI shows
  (exception_type + exception_message), and the process carries on with the next prompt.
tests/comfyui_live_check.py checks the same against a real ComfyUI.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load_pack(path: Path = REPO):
    """The pack module, imported as ComfyUI's load_custom_node does (once per process)."""
    name = str(path).replace(".", "_x_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


PACK = load_pack()
NODES = PACK.nodes  # the pack's nodes subpackage (schema, runtime, types, ...)


@dataclass
class Outcome:
    """What ComfyUI reports for one node: outputs, or a validation / execution error."""

    outputs: tuple | None = None
    errors: list[str] = field(default_factory=list)
    exception_type: str | None = None
    exception_message: str | None = None
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.outputs is not None


def validate(node, inputs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """execution.validate_inputs for one node with literal and linked values already resolved."""
    errors, converted = [], dict(inputs)
    own = vars(node).get("validate_inputs")
    named = inspect.getfullargspec(own.__func__).args if own is not None else []
    for spec in node.INPUTS:
        if spec.name not in inputs:
            if not spec.optional:
                errors.append(f"Required input is missing: {spec.name}")
            continue
        value = inputs[spec.name]
        try:
            if spec.type == "INT":
                value = int(value)
            elif spec.type == "FLOAT":
                value = float(value)
            elif spec.type == "BOOLEAN":
                value = bool(value)
        except (TypeError, ValueError) as error:
            errors.append(f"Failed to convert an input value to a {spec.type} value: {spec.name}, {value}, {error}")
            continue
        converted[spec.name] = value
        if spec.name in named or spec.type not in ("INT", "FLOAT"):
            continue
        if spec.min is not None and value < spec.min:
            errors.append(f"Value {value} smaller than min of {spec.min}: {spec.name}")
        if spec.max is not None and value > spec.max:
            errors.append(f"Value {value} bigger than max of {spec.max}: {spec.name}")
    if own is not None and not errors:
        result = own.__func__(node, **{name: converted[name] for name in named[1:] if name in converted})
        if result is not True:
            errors.append(f"Custom validation failed for node: {', '.join(named[1:])} - {result}")
    return converted, errors


def execute(node, inputs: dict[str, Any], interrupt_exception: type[BaseException] | None = None) -> Outcome:
    """One node run as ComfyUI's executor runs it; never raises for what the node raises."""
    converted, errors = validate(node, inputs)
    if errors:
        return Outcome(errors=errors)
    try:
        return Outcome(outputs=node.run(**converted))
    except Exception as error:  # the executor reports any exception and carries on
        if interrupt_exception is not None and isinstance(error, interrupt_exception):
            return Outcome(interrupted=True)
        return Outcome(exception_type=f"{type(error).__module__}.{type(error).__name__}", exception_message=str(error))


def spec_defaults(node) -> dict[str, Any]:
    """Every widget input at its declared default (what a freshly added node queues)."""
    return {spec.name: spec.default if spec.type != "COMBO" or spec.default is not None else spec.choices()[0]
            for spec in node.INPUTS if spec.is_widget}


def load_handle(model_root: Path, keep_idle_on: str = "gpu", model: str = "V-Express", dtype: str = "fp32"):
    """The Load V-Express Models node's output for the tiny models `model_root`/`model`, without ComfyUI."""
    import pytest

    runtime = NODES.runtime
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.MODEL_ROOT_ENV, str(model_root))
        patch.setattr(runtime, "folder_paths", None)
        (models,) = NODES.nodes_by_id()["VExpressLoadModels"].run(model=model, dtype=dtype, keep_idle_on=keep_idle_on)
    return models
