"""Loading: the V-Express model folder and the reference portrait."""
from __future__ import annotations


import torch

from vexpress_core.checkpoint import checked_model_folder, load_models
from vexpress_core.orchestration import DEFAULT_CROP, DEFAULT_FACE_MARGIN, Framing, framed_reference, reference_phase

from . import choices, runtime
from .detectors import detector_for
from .fetch import STORAGE_CHOICES, TOY_CHOICE, model_choices, model_folder, model_folder_path, model_folders, will_download  # noqa: F401  (model_folders, TOY_CHOICE: the loader module's public names)
from .management import ModelHandle
from .schema import Combo, Float, Int, Link, Node, Output, check_output_size, validation
from .types import IMAGE, MODELS, REFERENCE, image_to_uint8, uint8_to_image

IDLE_CHOICES = ("gpu", "cpu")


class VExpressLoadModels(Node):
    DISPLAY_NAME = "Load V-Express Models"
    DESCRIPTION = (
        "Loads a V-Express model folder from ComfyUI/models/v-express/ (a copy of tk93/V-Express's model_ckpts: "
        "v-express/*.bin, stable-diffusion-v1-5/unet/config.json, sd-vae-ft-mse/, wav2vec2-base-960h/, optionally "
        "insightface_models/). Every weight is checked strictly. The networks join ComfyUI's model management: "
        "'Unload models' and ComfyUI's memory logic can evict them, and they can offload other models to make room."
    )
    INPUTS = (
        Combo("model", model_choices, "A subfolder of ComfyUI/models/v-express/ holding the published model_ckpts layout, or 'V-Express' before it is there: then the first run downloads the files V-Express needs from Hugging Face (tk93/V-Express, about 9.7 GB; Cancel stops it, the next run resumes)."),
        Combo("dtype", choices.dtype_names, "Weight precision. auto = fp16 on GPUs that handle it, else bf16/fp32; always fp32 on the CPU. fp16 halves memory (about 4.5 GB for the networks).", default="auto"),
        Combo("keep_idle_on", IDLE_CHOICES, "gpu = networks stay loaded after use until ComfyUI needs the memory (fastest); cpu = each network is on the GPU only while its step runs, and latents wait in host memory (saves VRAM, the published save_gpu_memory idea; about 8 GB peak at 512x512).", default="gpu"),
        Combo("store_as", STORAGE_CHOICES, "Only when the model is downloaded: keep the five V-Express networks as published (fp32, 9.0 GB) or as fp16 safetensors (4.5 GB, checked to load strictly; what fp16 runs use anyway).", default=STORAGE_CHOICES[0], optional=True),
        Combo("weight_storage", choices.weight_storage_names, "dtype = weights in the dtype above (published). fp8_e4m3 = the ReferenceNet's and UNet's weights (motion modules included) kept as float8 with a scale per channel: half of fp16's memory for them (about 2.2 GB instead of 4.4 GB), still computing in the dtype above; numbers change slightly; each layer's weight is expanded when it runs (slower on CPUs). Loads with the lowest peak from fp16 safetensors (store_as).", default="dtype", optional=True),
    )
    OUTPUTS = (Output(MODELS, "models", "The V-Express networks, for Load Reference, Audio Encode and the Sampler."),)

    @classmethod
    def validate_inputs(cls, model):
        if will_download(model):
            return True
        return validation(lambda: checked_model_folder(model_folder_path(model)))

    @classmethod
    def execute(cls, model, dtype, keep_idle_on, store_as=STORAGE_CHOICES[0], weight_storage="dtype"):
        model_dir = model_folder(model, fp16=store_as == STORAGE_CHOICES[1])
        load_device = runtime.torch_device()
        torch_dtype = runtime.auto_dtype(load_device) if dtype == "auto" else choices.dtype(dtype)
        low_vram = keep_idle_on == "cpu"
        offload_device = torch.device("cpu") if low_vram else runtime.offload_device()
        if not runtime.model_management:  # placed by the core: idle networks wait where they run unless low_vram
            offload_device = torch.device("cpu") if low_vram else load_device
        models = load_models(model_dir, dtype=torch_dtype, device=offload_device, weight_storage=weight_storage)
        return (ModelHandle.create(models, model, load_device, offload_device, low_vram),)


class VExpressLoadReference(Node):
    DISPLAY_NAME = "V-Express Load Reference"
    DESCRIPTION = (
        "Prepares the reference portrait: crops it to the output aspect (centre, around the face, or not at all), "
        "resizes it to width x height, finds the face's eyes and nose, and runs the VAE and ReferenceNet once. "
        "Stops with an error when no face is found."
    )
    INPUTS = (
        Link("models", MODELS, "From Load V-Express Models."),
        Link("image", IMAGE, "The portrait (first image of a batch is used). A clear, front-facing face works best."),
        Int("width", 512, 64, 1024, "Output width in pixels, a multiple of 8. Recommended 512 (the training size); 384-640 work.", step=8),
        Int("height", 512, 64, 1024, "Output height in pixels, a multiple of 8. Recommended 512; keep width and height even for H.264.", step=8),
        Combo("crop", choices.crop_names, "center = largest centred crop of the output aspect; face = crop around the detected face with face_margin; stretch = resize without cropping (the published behaviour).", default=DEFAULT_CROP),
        Float("face_margin", DEFAULT_FACE_MARGIN, 0.0, 3.0, "For crop = face: space kept around the face box on each side, as a fraction of the face size. Recommended 0.5-1.0 (head and shoulders).", step=0.05),
        Combo("detector", choices.detector_names, "Face detector. auto = insightface when <model>/insightface_models/models/buffalo_l and the insightface package exist, else retinaface (bundled, CPU).", default="auto"),
        Int("face_index", -1, -1, 32, "-1 = the largest face; 0, 1, ... = faces counted from the image's left."),
    )
    OUTPUTS = (
        Output(REFERENCE, "reference", "The prepared reference for V-Kps Retarget and the Sampler."),
        Output(IMAGE, "image", "The reference image as the model sees it (width x height)."),
    )

    @classmethod
    def validate_inputs(cls, width, height):
        return validation(check_output_size, cls, width=width, height=height)

    @classmethod
    def execute(cls, models: ModelHandle, image, width, height, crop, face_margin, detector, face_index):
        if image.shape[0] < 1:
            raise ValueError("Load Reference got an empty IMAGE batch: connect an image")
        check_output_size(cls, width=width, height=height)
        framing = Framing(crop, face_margin, None if face_index < 0 else face_index)
        framed = framed_reference(image_to_uint8(image[0]), width, height, detector_for(detector, models.model_dir), framing)
        with runtime.interruptible(models.models.vae, models.models.reference_net):
            prepared = reference_phase(models.using, framed)
        return (prepared, uint8_to_image(prepared.reference.image[None]))
