"""One declarative spec per node, rendered to ComfyUI's node schema when ComfyUI loads the pack.

A node is a `Node` subclass: its inputs and outputs as plain data (`Int`, `Float`, `Boolean`,
`Combo`, `Link`, `Output`) and an `execute` classmethod. The same class runs in tests and scripts
without ComfyUI, describes itself in ComfyUI's /object_info shape (`object_info`), and becomes a
`comfy_api` `io.ComfyNode` through `comfy_node` (ComfyUI >= 0.3.48 has that API).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

CATEGORY = "V-Express"
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")


@dataclass(frozen=True)
class Input:
    """One node input. `options` (COMBO only) is a sequence or a function returning one, read each
    time the schema is built, so registries and model folders show what exists now."""

    name: str
    type: str
    tooltip: str
    optional: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: Sequence | Callable[[], Sequence] | None = None
    control_after_generate: bool | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    def choices(self) -> list:
        return list(self.options() if callable(self.options) else self.options or ())


def Int(name, default, min, max, tooltip, step=None, optional=False, control_after_generate=None) -> Input:
    return Input(name, "INT", tooltip, optional, default, min, max, step, control_after_generate=control_after_generate)


def Float(name, default, min, max, tooltip, step=None, optional=False) -> Input:
    return Input(name, "FLOAT", tooltip, optional, default, min, max, step)


def Boolean(name, default, tooltip, optional=False) -> Input:
    return Input(name, "BOOLEAN", tooltip, optional, default)


def Combo(name, options, tooltip, default=None, optional=False) -> Input:
    return Input(name, "COMBO", tooltip, optional, default, options=options)


def Link(name, type, tooltip, optional=False) -> Input:
    """A socket-only input: IMAGE, AUDIO or one of the pack's VEXPRESS_ types."""
    return Input(name, type, tooltip, optional)


@dataclass(frozen=True)
class Output:
    type: str
    name: str
    tooltip: str


class Node:
    """Base of the pack's nodes. Subclasses set DISPLAY_NAME, DESCRIPTION, INPUTS, OUTPUTS and
    define `execute(cls, **inputs) -> tuple` (one value per output; optional inputs need defaults).
    `validate_inputs(cls, <input names>)` may return True or an error text; ComfyUI calls it before
    running with only the inputs it names. `fingerprint_inputs(cls, **inputs)` (ComfyUI's IS_CHANGED)
    may return a value that changes when the node must run again for the same inputs (a file's mtime)."""

    DISPLAY_NAME: str = ""
    DESCRIPTION: str = ""
    CATEGORY: str = CATEGORY
    INPUTS: tuple[Input, ...] = ()
    OUTPUTS: tuple[Output, ...] = ()

    @classmethod
    def node_id(cls) -> str:
        return cls.__name__

    @classmethod
    def execute(cls, **inputs) -> tuple:
        raise NotImplementedError(f"{cls.__name__} defines no execute")

    @classmethod
    def input_spec(cls, name: str) -> Input:
        return next(spec for spec in cls.INPUTS if spec.name == name)

    @classmethod
    def has_validation(cls) -> bool:
        return "validate_inputs" in vars(cls)

    @classmethod
    def has_fingerprint(cls) -> bool:
        return "fingerprint_inputs" in vars(cls)

    @classmethod
    def run(cls, **inputs) -> tuple:
        """`execute` with the output count checked (what ComfyUI calls through the rendered node)."""
        result = cls.execute(**inputs)
        if not isinstance(result, tuple) or len(result) != len(cls.OUTPUTS):
            raise TypeError(f"{cls.node_id()} returned {type(result).__name__}, expected {len(cls.OUTPUTS)} outputs")
        return result


def validation(check: Callable[..., object], *args, **kwargs) -> bool | str:
    """A `validate_inputs` answer from a check that raises ValueError: True, or the error's message."""
    try:
        check(*args, **kwargs)
    except ValueError as error:
        return str(error)
    return True


def check_output_size(node: type[Node], **sizes: int | None) -> None:
    """Raises unless each size is a multiple of 8 within its input's range. A node whose
    validate_inputs names these inputs must call this: ComfyUI then skips its own range check.
    A linked value (None at validation) is checked when the node runs."""
    for name, value in sizes.items():
        spec = node.input_spec(name)
        if value is not None and (value % 8 or not spec.min <= value <= spec.max):
            raise ValueError(f"{node.DISPLAY_NAME}: {name} must be a multiple of 8 between {spec.min} and {spec.max}, "
                             f"got {value}")


def _pruned(values: dict) -> dict:
    return {key: value for key, value in values.items() if value is not None}


def input_options(spec: Input) -> dict:
    """The options dict ComfyUI's io inputs serialise to (Input/WidgetInput/Int/Float/Combo.as_dict)."""
    options = _pruned({"tooltip": spec.tooltip})
    if not spec.is_widget:
        return options
    options |= _pruned({"default": spec.default})
    if spec.type in ("INT", "FLOAT"):
        options |= _pruned({"min": spec.min, "max": spec.max, "step": spec.step,
                            "control_after_generate": spec.control_after_generate})
    if spec.type == "COMBO":
        options |= {"multiselect": False, "options": spec.choices()}
    return options


def object_info(node: type[Node]) -> dict:
    """The node as ComfyUI's /object_info describes a V3 node (Schema.get_v1_info)."""
    groups: dict[str, dict] = {"required": {}}
    for spec in node.INPUTS:
        groups.setdefault("optional" if spec.optional else "required", {})[spec.name] = [spec.type, input_options(spec)]
    return {
        "input": groups,
        "input_order": {group: list(entries) for group, entries in groups.items()},
        "output": [out.type for out in node.OUTPUTS],
        "output_is_list": [False] * len(node.OUTPUTS),
        "output_name": [out.name for out in node.OUTPUTS],
        "output_tooltips": [out.tooltip for out in node.OUTPUTS],
        "name": node.node_id(),
        "display_name": node.DISPLAY_NAME,
        "description": node.DESCRIPTION,
        "category": node.CATEGORY,
        "output_node": False,
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    }


def _comfy_input(spec: Input, io):
    common = dict(optional=spec.optional, tooltip=spec.tooltip)
    if spec.type == "INT":
        return io.Int.Input(spec.name, default=spec.default, min=spec.min, max=spec.max, step=spec.step,
                            control_after_generate=spec.control_after_generate, **common)
    if spec.type == "FLOAT":
        return io.Float.Input(spec.name, default=spec.default, min=spec.min, max=spec.max, step=spec.step, **common)
    if spec.type == "BOOLEAN":
        return io.Boolean.Input(spec.name, default=spec.default, **common)
    if spec.type == "STRING":
        return io.String.Input(spec.name, default=spec.default, **common)
    if spec.type == "COMBO":
        return io.Combo.Input(spec.name, options=spec.choices(), default=spec.default, **common)
    return _comfy_type(spec.type, io).Input(spec.name, **common)


def _comfy_type(type_name: str, io):
    builtin = {"IMAGE": io.Image, "AUDIO": io.Audio, "MASK": io.Mask, "LATENT": io.Latent, "VIDEO": io.Video}
    return builtin.get(type_name) or io.Custom(type_name)


def bound_to_node(function: Callable, node: type[Node]) -> Callable:
    """`function(node, ...)` whatever class ComfyUI calls it on (it calls validate_inputs on a locked
    copy of the io.ComfyNode class, which has none of the node's own attributes), with `function`'s
    signature: ComfyUI passes only the inputs the signature names."""
    def call(cls, **inputs):
        return function(node, **inputs)

    call.__signature__ = inspect.signature(function)
    call.__name__ = function.__name__
    return call


def comfy_node(node: type[Node], io) -> type:
    """`node` as an `io.ComfyNode` subclass of ComfyUI's `comfy_api.latest.io`."""

    def define_schema(cls):
        return io.Schema(
            node_id=node.node_id(), display_name=node.DISPLAY_NAME, category=node.CATEGORY,
            description=node.DESCRIPTION, inputs=[_comfy_input(spec, io) for spec in node.INPUTS],
            outputs=[_comfy_type(out.type, io).Output(display_name=out.name, tooltip=out.tooltip) for out in node.OUTPUTS],
        )

    def execute(cls, **inputs):
        return io.NodeOutput(*node.run(**inputs))

    attributes = {
        "__doc__": node.DESCRIPTION, "__module__": node.__module__, "SPEC": node,
        "define_schema": classmethod(define_schema), "execute": classmethod(execute),
    }
    if node.has_validation():
        attributes["validate_inputs"] = classmethod(bound_to_node(vars(node)["validate_inputs"].__func__, node))
    if node.has_fingerprint():
        attributes["fingerprint_inputs"] = classmethod(bound_to_node(vars(node)["fingerprint_inputs"].__func__, node))
    return type(node.node_id(), (io.ComfyNode,), attributes)
