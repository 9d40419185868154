"""The V-Express nodes. Adding a node: write a `schema.Node` subclass in the module of its family
(or a new module) and list it in NODES; ComfyUI, the tests and the workflow checks pick it up from here."""
from __future__ import annotations

from . import runtime
from .audio import VExpressAudioEncode
from .framing import VExpressFaceCrop, VExpressPasteBack
from .keypoints import VExpressKpsExtract, VExpressKpsLoad, VExpressKpsPreview, VExpressKpsRetarget
from .loaders import VExpressLoadModels, VExpressLoadReference
from .options import VExpressMemoryOptions, VExpressSpeedOptions, VExpressWindowOptions
from .sampling import VExpressSampler
from .schema import Node, comfy_node

NODES: tuple[type[Node], ...] = (
    VExpressLoadModels,
    VExpressLoadReference,
    VExpressAudioEncode,
    VExpressKpsExtract,
    VExpressKpsLoad,
    VExpressKpsRetarget,
    VExpressKpsPreview,
    VExpressWindowOptions,
    VExpressMemoryOptions,
    VExpressSpeedOptions,
    VExpressSampler,
    VExpressFaceCrop,
    VExpressPasteBack,
)

MINIMUM_COMFYUI = "0.3.48"  # first release with comfy_api.latest io.ComfyNode and comfy_entrypoint

runtime.register_model_folder()


def nodes_by_id() -> dict[str, type[Node]]:
    return {node.node_id(): node for node in NODES}


async def comfy_entrypoint():
    """ComfyUI's entry point for V3 node packs: the extension listing every node on ComfyUI's schema."""
    from comfy_api.latest import ComfyExtension, io

    comfy_nodes = [comfy_node(node, io) for node in NODES]

    class VExpressExtension(ComfyExtension):
        async def get_node_list(self):
            return comfy_nodes

    return VExpressExtension()


__all__ = ["NODES", "MINIMUM_COMFYUI", "comfy_entrypoint", "nodes_by_id"]
