"""The name -> entry registries behind every choice a user picks by name."""
import pytest
import torch

from vexpress_core.dtypes import DTYPES, resolved_dtype
from vexpress_core.detectors import DETECTORS
from vexpress_core.framing import PASTE_REGIONS
from vexpress_core.keypoints import RESAMPLE_MODES, RETARGET_MODES
from vexpress_core.presets import PRESETS
from vexpress_core.registry import Registry
from vexpress_core.sampling import BLEND_WEIGHTS, SCHEDULERS
from vexpress_core.weight_storage import WEIGHT_STORAGES


def test_registry_registers_by_call_and_decorator_in_order():
    colours = Registry("colour")
    colours.register("red", 1)

    @colours.register("green")
    def green():
        return 2

    assert colours.names() == ("red", "green") and list(colours) == ["red", "green"] and len(colours) == 2
    assert colours["red"] == 1 and colours["green"] is green and "green" in colours and "blue" not in colours
    assert colours.unregister("red") == 1 and colours.names() == ("green",)


def test_unknown_and_taken_names_raise_with_the_known_names():
    colours = Registry("colour")
    colours.register("red", 1)
    colours.register("green", 2)
    with pytest.raises(ValueError, match="unknown colour 'blue'; known: red, green"):
        colours["blue"]
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        colours.register("red", 3)
    with pytest.raises(ValueError, match="non-empty string"):
        colours.register("", 3)


def test_every_extension_point_lists_its_published_choices_first():
    assert DETECTORS.names() == ("auto", "insightface", "retinaface")
    assert SCHEDULERS.names() == ("ddim", "dpmpp", "euler", "unipc")
    assert BLEND_WEIGHTS.names() == ("mean", "ramp")
    assert RETARGET_MODES.names() == ("fix_face", "no_retarget", "offset_retarget", "naive_retarget", "speech_motion")
    assert RESAMPLE_MODES.names() == ("stretch", "time")
    assert DTYPES.names() == ("fp32", "fp16", "bf16")
    assert PASTE_REGIONS.names() == ("head", "lower-face")
    assert PRESETS.names() == ("quality", "fast", "draft")
    assert WEIGHT_STORAGES.names() == ("dtype", "fp8_e4m3")


def test_dtype_names_resolve_once_for_every_front_end():
    assert resolved_dtype("auto", "cpu") == torch.float32
    assert resolved_dtype("auto", "cuda:1") == torch.float16
    assert resolved_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; known: fp32, fp16, bf16"):
        resolved_dtype("fp8", "cpu")
