from .attention import SpatialTransformer, VExpressTransformerBlock
from .audio_projection import AudioProjection
from .guider import VKpsGuider
from .motion import MotionModule, sinusoidal_position_code
from .reference import REFERENCE_NET_ABSENT_KEYS, build_reference_net, capturing_norm2, reference_features
from .unet import VExpressUNet

__all__ = [
    "AudioProjection",
    "MotionModule",
    "REFERENCE_NET_ABSENT_KEYS",
    "SpatialTransformer",
    "VExpressTransformerBlock",
    "VExpressUNet",
    "VKpsGuider",
    "build_reference_net",
    "capturing_norm2",
    "reference_features",
    "sinusoidal_position_code",
]
