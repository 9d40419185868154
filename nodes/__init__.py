"""Registry of the V-Express nodes (the node code lives in one module per family)."""
from . import runtime
from .audio import VExpressAudioEncode
from .keypoints import VExpressKpsExtract, VExpressKpsLoad, VExpressKpsPreview, VExpressKpsRetarget
from .loaders import VExpressLoadModels, VExpressLoadReference
from .sampling import VExpressSampler

runtime.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "VExpressLoadModels": VExpressLoadModels,
    "VExpressLoadReference": VExpressLoadReference,
    "VExpressAudioEncode": VExpressAudioEncode,
    "VExpressKpsExtract": VExpressKpsExtract,
    "VExpressKpsLoad": VExpressKpsLoad,
    "VExpressKpsRetarget": VExpressKpsRetarget,
    "VExpressKpsPreview": VExpressKpsPreview,
    "VExpressSampler": VExpressSampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "VExpressLoadModels": "Load V-Express Models",
    "VExpressLoadReference": "V-Express Load Reference",
    "VExpressAudioEncode": "V-Express Audio Encode",
    "VExpressKpsExtract": "V-Express V-Kps Extract",
    "VExpressKpsLoad": "V-Express V-Kps Load",
    "VExpressKpsRetarget": "V-Express V-Kps Interpolate / Retarget",
    "VExpressKpsPreview": "V-Express V-Kps Preview",
    "VExpressSampler": "V-Express Sampler",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
