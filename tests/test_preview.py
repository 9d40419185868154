"""Live previews: latent -> RGB projection, the preview picture, rate limiting, and the sampler hook."""
import numpy as np
import pytest
import torch
from PIL import Image

from vexpress_core.preview import contact_sheet, latents_to_rgb, window_preview, with_previews
from vexpress_core.sampling import Progress, make_scheduler, sample


def fake_denoiser(latents, timestep, windows):
    """Deterministic per-window 'v-predictions' that depend on the latents and the timestep."""
    return torch.stack([torch.sin(latents[0, :, list(w)] + float(timestep) / 1000) * 0.5 for w in windows])


def noise(frames=20, size=8, seed=0):
    return torch.randn([1, 4, frames, size, size], generator=torch.Generator().manual_seed(seed))


def test_projection_uses_the_sd15_latent_factors():
    latents = torch.zeros(4, 3, 2, 5)
    latents[0, 1] = 1.0
    rgb = latents_to_rgb(latents)
    assert rgb.shape == (3, 2, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[0] == 128).all()  # zero latents are mid grey
    assert rgb[1, 0, 0].tolist() == [round((1 + 0.3512) * 127.5), round((1 + 0.2297) * 127.5), round((1 + 0.3227) * 127.5)]
    with pytest.raises(ValueError, match=r"\[4, frames, h, w\]"):
        latents_to_rgb(torch.zeros(1, 4, 3, 8, 8))


@pytest.mark.parametrize("frames, side, expected", [(24, 64, (320, 320)), (8, 16, (48, 48)), (1, 64, (64, 64)),
                                                   (24, 128, (512, 512))])
def test_contact_sheet_tiles_the_window_within_the_size_limit(frames, side, expected):
    picture = contact_sheet(np.full((frames, side, side, 3), 7, np.uint8))
    assert isinstance(picture, Image.Image) and picture.mode == "RGB" and picture.size == expected


def test_previews_are_rate_limited_and_the_last_window_always_shows():
    now = [0.0]
    calls = []
    update = with_previews(lambda progress, picture: calls.append((progress.window, picture)), per_second=2,
                           clock=lambda: now[0])
    latents = torch.zeros(4, 2, 4, 4)
    for window in range(1, 11):
        update(Progress(0, 1, window, 10, (0, 1), lambda: latents))
        now[0] += 0.1  # ten windows a second
    assert [window for window, _ in calls] == list(range(1, 11))  # every window reaches the progress bar
    assert [window for window, picture in calls if picture is not None] == [1, 6, 10]
    update(Progress(0, 1, 1, 1))  # no latents: no picture
    assert calls[-1] == (1, None)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp", "euler"])
def test_previews_never_change_the_result(scheduler):
    plain = sample(fake_denoiser, noise(), make_scheduler(scheduler), 3, context_frames=8, context_overlap=2)
    pictures = []
    previewed = sample(fake_denoiser, noise(), make_scheduler(scheduler), 3, context_frames=8, context_overlap=2,
                       callback=with_previews(lambda progress, picture: pictures.append((progress, picture)),
                                              per_second=1e9))
    assert torch.equal(plain, previewed)
    assert len(pictures) == 3 * 3  # 20 frames in windows of 8 overlapping by 2: 3 windows, 3 steps
    progress, picture = pictures[0]
    assert progress.frames == tuple(range(8))
    assert isinstance(picture, Image.Image) and picture.mode == "RGB" and picture.size == (24, 24)  # 8 frames of 8x8


def test_the_preview_shows_the_schedulers_own_clean_estimate():
    latents = noise(frames=6)
    scheduler = make_scheduler("ddim")
    estimates = []
    sample(fake_denoiser, latents, scheduler, 2, context_frames=8, callback=lambda p: estimates.append(p.denoised()))
    reference = make_scheduler("ddim")
    reference.set_timesteps(2)
    first = reference.timesteps[0]
    expected = reference.step(fake_denoiser(latents, first, [range(6)])[0][None], first, latents).pred_original_sample
    torch.testing.assert_close(estimates[0], expected[0], rtol=1e-5, atol=1e-5)
    assert window_preview(Progress(0, 1, 1, 1)) is None
