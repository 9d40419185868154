"""Classifier-free guidance through the node path: the Sampler node's cfg > 1 reaches the core and
changes the video (the other node tests run at cfg 1, which skips the unconditional branch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_like import NODES, execute, load_handle
from vexpress_core.audio import synthetic_speech
from vexpress_core.demo import ASSETS_DIR
from vexpress_core.settings import WindowSettings
from vexpress_core.tiny import make_tiny_models

BY_ID = NODES.nodes_by_id()
SAMPLER = dict(steps=2, reference_weight=0.95, audio_weight=3.0, scheduler="ddim", seed=7, deflicker=False,
               window_options=WindowSettings(context_frames=4, context_overlap=1), previews=False)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(node_id, **inputs):
    outcome = execute(BY_ID[node_id], inputs)
    assert outcome.ok, (outcome.errors, outcome.exception_message)
    return outcome.outputs


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("v-express")
    make_tiny_models(root / "V-Express")
    models = load_handle(root)
    portrait = torch.from_numpy(np.array(Image.open(ASSETS_DIR / "portrait.png").convert("RGB"))).float()[None] / 255
    reference, _ = run("VExpressLoadReference", models=models, image=portrait, width=64, height=64, crop="center",
                       face_margin=0.6, detector="retinaface", face_index=-1)
    wave = torch.from_numpy(synthetic_speech(0.3))[None, None]
    speech, _, _ = run("VExpressAudioEncode", models=models, audio={"waveform": wave, "sample_rate": 16000}, fps=30.0)
    (kps,) = run("VExpressKpsRetarget", reference=reference, speech=speech, mode="fix_face", resample="auto")
    return dict(models=models, reference=reference, speech=speech, kps=kps)


def test_sampler_node_guidance_reaches_the_core(graph, monkeypatch):
    sampling = NODES.sampling
    seen = []
    real = sampling.frames_phase

    def spy(using, reference, speech, track, settings, **kwargs):
        seen.append(settings.guidance_scale)
        return real(using, reference, speech, track, settings, **kwargs)

    monkeypatch.setattr(sampling, "frames_phase", spy)
    guided, _, _ = run("VExpressSampler", **graph, **SAMPLER, cfg=3.5)
    again, _, _ = run("VExpressSampler", **graph, **SAMPLER, cfg=3.5)
    unguided, _, _ = run("VExpressSampler", **graph, **SAMPLER, cfg=1.0)
    assert seen == [3.5, 3.5, 1.0]
    assert torch.equal(guided, again)
    # The unconditional branch and the guidance mix change the frames (a cfg ignored on the node
    # path, or guidance that cancels out, would leave them equal).
    assert (guided - unguided).abs().max().item() > 1e-2
