"""Loading: the V-Express model folder and the reference portrait."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vexpress_core.dtypes import AUTO, DTYPES
from vexpress_core.checkpoint import CheckpointError, load_models, resolve_model_paths
from vexpress_core.keypoints import DETECTORS, crop_box, reference_keypoints, select_face
from vexpress_core.offload import REFERENCE_NETWORKS
from vexpress_core.pipeline import prepare_reference, resized_reference

from . import runtime
from .detectors import detector_for
from .types import CATEGORY, IDLE_CHOICES, IMAGE, MODELS, REFERENCE, ModelHandle, ReferenceInput, image_to_uint8, uint8_to_image

CROP_MODES = ("center", "face", "stretch")
PUBLISHED_LAYOUT = "model_ckpts"

_cache: dict[tuple, ModelHandle] = {}


def model_folders() -> list[str]:
    """Subfolders of every registered `models/v-express` folder (each a copy of model_ckpts)."""
    names = set()
    for root in runtime.model_roots():
        if os.path.isdir(root):
            names.update(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    return sorted(names)


def model_folder_path(name: str) -> Path:
    """The model directory for a dropdown entry; a full clone of the Hugging Face repo
    (`<name>/model_ckpts/...`) works as well as a copy of `model_ckpts` itself."""
    for root in runtime.model_roots():
        candidate = Path(root) / name
        if candidate.is_dir():
            nested = candidate / PUBLISHED_LAYOUT
            return nested if (nested / "v-express").is_dir() else candidate
    roots = ", ".join(runtime.model_roots()) or "ComfyUI/models/v-express"
    raise CheckpointError(f"V-Express model folder {name!r} not found in {roots}; copy tk93/V-Express's model_ckpts there as {name}/")


def _weights_signature(model_dir: Path) -> tuple:
    paths = resolve_model_paths(model_dir)
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in paths.weights.values()))


class VExpressLoadModels:
    DESCRIPTION = (
        "Loads a V-Express model folder from ComfyUI/models/v-express/ (a copy of tk93/V-Express's model_ckpts: "
        "v-express/*.bin, stable-diffusion-v1-5/unet/config.json, sd-vae-ft-mse/, wav2vec2-base-960h/, optionally "
        "insightface_models/). Every weight is checked strictly. Loaded once and reused while the folder, dtype and "
        "placement stay the same."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODELS,)
    RETURN_NAMES = ("models",)
    OUTPUT_TOOLTIPS = ("The V-Express networks, for Load Reference, Audio Encode and the Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_folders(), {"tooltip": "A subfolder of ComfyUI/models/v-express/ holding the published model_ckpts layout (the example workflows use 'V-Express')."}),
                "dtype": ([AUTO, *DTYPES.names()], {"default": AUTO, "tooltip": "Weight precision. auto = fp16 on GPUs that handle it, else bf16/fp32; always fp32 on the CPU. fp16 halves memory (about 4.5 GB for the networks)."}),
                "keep_idle_on": (list(IDLE_CHOICES), {"default": "gpu", "tooltip": "Where networks wait between uses. gpu = fastest; cpu = each network is moved to the GPU only while it runs (saves VRAM, the published save_gpu_memory idea; about 8 GB peak at 512x512)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        try:
            resolve_model_paths(model_folder_path(model))
        except CheckpointError as error:
            return str(error)
        return True

    def load(self, model, dtype, keep_idle_on):
        model_dir = model_folder_path(model)
        load_device = runtime.torch_device()
        torch_dtype = runtime.auto_dtype(load_device) if dtype == AUTO else DTYPES[dtype]
        offload_device = torch.device("cpu") if keep_idle_on == "cpu" else load_device
        key = (str(model_dir.resolve()), str(torch_dtype), str(load_device), str(offload_device), _weights_signature(model_dir))
        if key not in _cache:
            _cache.clear()  # one model set at a time: a new choice frees the old one
            runtime.empty_cache()
            models = load_models(model_dir, dtype=torch_dtype, device=offload_device)
            _cache[key] = ModelHandle(models, model, load_device, offload_device)
        return (_cache[key],)


class VExpressLoadReference:
    DESCRIPTION = (
        "Prepares the reference portrait: crops it to the output aspect (centre, around the face, or not at all), "
        "resizes it to width x height, finds the face's eyes and nose, and runs the VAE and ReferenceNet once. "
        "Stops with an error when no face is found."
    )
    CATEGORY = CATEGORY
    FUNCTION = "prepare"
    RETURN_TYPES = (REFERENCE, IMAGE)
    RETURN_NAMES = ("reference", "image")
    OUTPUT_TOOLTIPS = (
        "The prepared reference for V-Kps Retarget and the Sampler.",
        "The reference image as the model sees it (width x height).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "models": (MODELS, {"tooltip": "From Load V-Express Models."}),
                "image": (IMAGE, {"tooltip": "The portrait (first image of a batch is used). A clear, front-facing face works best."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 8, "tooltip": "Output width in pixels, a multiple of 8. Recommended 512 (the training size); 384-640 work."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 8, "tooltip": "Output height in pixels, a multiple of 8. Recommended 512; keep width and height even for H.264."}),
                "crop": (list(CROP_MODES), {"default": "center", "tooltip": "center = largest centred crop of the output aspect; face = crop around the detected face with face_margin; stretch = resize without cropping (the published behaviour)."}),
                "face_margin": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 3.0, "step": 0.05, "tooltip": "For crop = face: space kept around the face box on each side, as a fraction of the face size. Recommended 0.5-1.0 (head and shoulders)."}),
                "detector": (list(DETECTORS.names()), {"default": "auto", "tooltip": "Face detector. auto = insightface when <model>/insightface_models/models/buffalo_l and the insightface package exist, else retinaface (bundled, CPU)."}),
                "face_index": ("INT", {"default": -1, "min": -1, "max": 32, "tooltip": "-1 = the largest face; 0, 1, ... = faces counted from the image's left."}),
            }
        }

    def prepare(self, models: ModelHandle, image, width, height, crop, face_margin, detector, face_index):
        if image.shape[0] < 1:
            raise ValueError("Load Reference got an empty IMAGE batch")
        picture = image_to_uint8(image[0])
        face_choice = None if face_index < 0 else face_index
        finder = detector_for(detector, models.model_dir)
        aspect = width / height
        if crop == "face":
            face = select_face(finder.detect(picture), face_choice, "the reference image")
            x0, y0, x1, y1 = crop_box((picture.shape[1], picture.shape[0]), aspect, face.bbox, face_margin)
            picture = picture[y0:y1, x0:x1]
        elif crop == "center":
            x0, y0, x1, y1 = crop_box((picture.shape[1], picture.shape[0]), aspect)
            picture = picture[y0:y1, x0:x1]
        picture = resized_reference(picture, width, height)
        keypoints = reference_keypoints(picture, finder, face_choice)
        with models.using(REFERENCE_NETWORKS) as networks:
            reference = prepare_reference(networks, picture, width, height)
        return (ReferenceInput(reference, np.asarray(keypoints, np.float32)), uint8_to_image(reference.image[None]))
