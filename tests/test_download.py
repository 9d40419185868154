"""Fetching the model on first use, against a fake Hugging Face Hub (no network)."""
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vexpress_core import download
from vexpress_core.checkpoint import WEIGHT_NAMES, load_vexpress_networks, read_state_dict, resolve_model_paths
from vexpress_core.download import DownloadCancelled, DownloadError, HubClient, ensure_model, needed_files

CHUNK = 1 << 20
EXTRAS = {  # published repository files V-Express never loads
    "README.md": b"# V-Express\n",
    "model_ckpts/wav2vec2-base-960h/tf_model.h5": b"\0" * 3000,
    "model_ckpts/wav2vec2-base-960h/vocab.json": b"{}",
    "model_ckpts/sd-vae-ft-mse/diffusion_pytorch_model.bin": b"\0" * 2000,
    "model_ckpts/insightface_models/models/buffalo_l/det_10g.onnx": b"onnx" * 100,
    "model_ckpts/insightface_models/models/buffalo_l/w600k_r50.onnx": b"onnx" * 50,
}


def published_repo(model_dir: Path) -> dict[str, Path | bytes]:
    """A model directory as tk93/V-Express publishes it: the five networks at the top, the rest in model_ckpts/."""
    files: dict[str, Path | bytes] = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        top_level = relative.startswith("v-express/")
        files[relative.removeprefix("v-express/") if top_level else f"model_ckpts/{relative}"] = path
    return {**files, **EXTRAS}


class FakeHub:
    """Serves a published-layout repository the way snapshot_download writes a local_dir: partial
    files under .cache/huggingface/download/ (resumed from their length), complete ones at their path."""

    def __init__(self, files, fail_after: int | None = None, delay: float = 0.0, offline: bool = False):
        self.files = files
        self.fail_after = fail_after
        self.delay = delay
        self.offline = offline
        self.requested: list[str] = []
        self.sent = 0

    def content(self, path: str) -> bytes:
        value = self.files[path]
        return value if isinstance(value, bytes) else value.read_bytes()

    def list_files(self, repo_id, revision):
        if self.offline:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        assert repo_id == "tk93/V-Express"
        return {path: len(self.content(path)) for path in self.files}

    def download(self, repo_id, revision, allow_patterns, local_dir, stop):
        for path in allow_patterns:
            self.requested.append(path)
            final = Path(local_dir) / path
            if final.is_file():
                continue
            data = self.content(path)
            partial = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{path}.incomplete"
            partial.parent.mkdir(parents=True, exist_ok=True)
            start = partial.stat().st_size if partial.exists() else 0
            with open(partial, "ab") as out:
                for offset in range(start, len(data), CHUNK):
                    if self.fail_after is not None and self.sent >= self.fail_after:
                        raise ConnectionError("connection reset by peer")
                    if stop.is_set():
                        raise DownloadCancelled("download cancelled")
                    piece = data[offset:offset + CHUNK]
                    out.write(piece)
                    out.flush()
                    self.sent += len(piece)
                    time.sleep(self.delay)
            final.parent.mkdir(parents=True, exist_ok=True)
            partial.replace(final)


@pytest.fixture(scope="module")
def repo(tiny_model_dir):
    return published_repo(tiny_model_dir)


def needed_total(repo) -> int:
    hub = FakeHub(repo)
    return download.total_size(needed_files(hub.list_files("tk93/V-Express", None)))


def test_file_selection_takes_only_what_vexpress_loads(repo):
    listing = FakeHub(repo).list_files("tk93/V-Express", None)
    chosen = {f.repo_path: f.target for f in needed_files(listing)}
    assert chosen == {
        **{f"{name}.bin": f"v-express/{name}.bin" for name in WEIGHT_NAMES},
        "model_ckpts/stable-diffusion-v1-5/unet/config.json": "stable-diffusion-v1-5/unet/config.json",
        "model_ckpts/sd-vae-ft-mse/config.json": "sd-vae-ft-mse/config.json",
        "model_ckpts/sd-vae-ft-mse/diffusion_pytorch_model.safetensors": "sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
        "model_ckpts/wav2vec2-base-960h/config.json": "wav2vec2-base-960h/config.json",
        "model_ckpts/wav2vec2-base-960h/preprocessor_config.json": "wav2vec2-base-960h/preprocessor_config.json",
        "model_ckpts/wav2vec2-base-960h/model.safetensors": "wav2vec2-base-960h/model.safetensors",
    }
    with_faces = {f.target for f in needed_files(listing, insightface=True)}
    assert with_faces - set(chosen.values()) == {"insightface_models/models/buffalo_l/det_10g.onnx",
                                                 "insightface_models/models/buffalo_l/w600k_r50.onnx"}
    no_vae_safetensors = {k: v for k, v in listing.items() if not k.endswith("diffusion_pytorch_model.safetensors")}
    assert "model_ckpts/sd-vae-ft-mse/diffusion_pytorch_model.bin" in {f.repo_path for f in needed_files(no_vae_safetensors)}
    without_guider = {k: v for k, v in listing.items() if k != "v_kps_guider.bin"}
    with pytest.raises(DownloadError, match="lacks files V-Express needs: v-express/v_kps_guider"):
        needed_files(without_guider)


def test_first_use_fetches_assembles_and_reports_bytes(tmp_path, repo, tiny_model_dir):
    hub = FakeHub(repo, delay=0.05)
    seen = []
    path = ensure_model(tmp_path, hub=hub, progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "V-Express"
    assert set(hub.requested) == {f.repo_path for f in needed_files(hub.list_files("tk93/V-Express", None))}
    paths = resolve_model_paths(path)
    assert paths.weights["reference_net"].read_bytes() == (tiny_model_dir / "v-express/reference_net.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["V-Express"]  # no download or staging folder left
    total = needed_total(repo)
    assert seen and all(t == total for _, t in seen) and seen[-1][0] == total
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len({d for d, _ in seen}) > 2
    assert ensure_model(tmp_path, hub=FakeHub(repo, offline=True)) == path  # present: no hub call at all


def test_failed_download_leaves_no_model_and_the_next_attempt_resumes(tmp_path, repo):
    total = needed_total(repo)
    with pytest.raises(DownloadError, match="run again to resume"):
        ensure_model(tmp_path, hub=FakeHub(repo, fail_after=total // 2))
    assert not (tmp_path / "V-Express").exists()
    kept = download.disk_bytes(tmp_path / ".V-Express.download")
    assert 0 < kept < total
    second = FakeHub(repo)
    resolve_model_paths(ensure_model(tmp_path, hub=second))
    assert second.sent == total - kept  # only the missing bytes travelled


def test_cancel_stops_the_transfer_and_keeps_no_model(tmp_path, repo):
    hub = FakeHub(repo, delay=0.02)
    polls = []

    def cancelled():
        polls.append(hub.sent)
        return hub.sent > 0

    with pytest.raises(DownloadCancelled, match="next attempt resumes"):
        ensure_model(tmp_path, hub=hub, cancelled=cancelled)
    for worker in list(download._workers.values()):
        worker.join(5)
    sent_at_cancel = hub.sent
    time.sleep(0.1)
    assert hub.sent == sent_at_cancel < needed_total(repo)  # the worker stopped, not just the caller
    assert not (tmp_path / "V-Express").exists()
    # ComfyUI's progress hook raises its own interrupt exception: that cancels too.
    class Interrupted(Exception):
        pass

    def interrupting(done, total):
        raise Interrupted

    with pytest.raises(Interrupted):
        ensure_model(tmp_path, hub=FakeHub(repo, delay=0.02), progress=interrupting)
    assert not (tmp_path / "V-Express").exists()
    resolve_model_paths(ensure_model(tmp_path, hub=FakeHub(repo)))


def test_fp16_conversion_halves_the_networks_and_loads_strictly(tmp_path, repo, tiny_model_dir):
    path = ensure_model(tmp_path, hub=FakeHub(repo), fp16=True)
    files = sorted(p.name for p in (path / "v-express").iterdir())
    assert files == sorted(f"{name}.safetensors" for name in WEIGHT_NAMES)
    before = sum((tiny_model_dir / "v-express" / f"{name}.bin").stat().st_size for name in WEIGHT_NAMES)
    after = download.weights_bytes(path)
    print(f"tiny model networks on disk: {before} bytes fp32 .bin -> {after} bytes fp16 safetensors")
    assert after < 0.55 * before
    for name in WEIGHT_NAMES:
        original = read_state_dict(tiny_model_dir / "v-express" / f"{name}.bin")
        with safe_open(str(path / "v-express" / f"{name}.safetensors"), "pt") as converted:
            assert set(converted.keys()) == set(original)
            for key in converted.keys():
                tensor = converted.get_tensor(key)
                expected = original[key] if key.endswith("pos_encoder.pe") else original[key].half()
                assert tensor.dtype == expected.dtype and torch.equal(tensor, expected), key
    load_vexpress_networks(resolve_model_paths(path), dtype=torch.float16)


def test_offline_gives_one_message_with_the_manual_steps(tmp_path, repo):
    with pytest.raises(DownloadError) as error:
        ensure_model(tmp_path / "models", hub=FakeHub(repo, offline=True))
    message = str(error.value)
    assert "cannot reach the Hugging Face Hub to fetch tk93/V-Express" in message
    assert f"python -m vexpress_core download {tmp_path / 'models'}" in message
    assert "hf download tk93/V-Express" in message and "v-express/*.bin" in message
    assert not (tmp_path / "models" / "V-Express").exists()


def test_an_incomplete_folder_is_never_overwritten(tmp_path, repo):
    (tmp_path / "V-Express" / "v-express").mkdir(parents=True)
    with pytest.raises(DownloadError, match="exists but is not a complete model"):
        ensure_model(tmp_path, hub=FakeHub(repo))
    with pytest.raises(DownloadError, match="no known model named 'SadTalker'"):
        ensure_model(tmp_path, "SadTalker", hub=FakeHub(repo))


CHILD_THAT_HANGS = """
import json, pathlib, sys, time
folder = pathlib.Path(json.loads(sys.argv[1])["local_dir"])
(folder / "a.bin.0123abcd.incomplete").write_bytes(b"unresumable")
(folder / ("b.bin." + "f" * 64 + ".incomplete")).write_bytes(b"resumable")
time.sleep(120)
"""


def test_the_hub_client_kills_its_download_process_on_cancel_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "CHILD_DOWNLOAD", CHILD_THAT_HANGS)
    stop = threading.Event()

    def cancel_once_started():
        while not (tmp_path / "a.bin.0123abcd.incomplete").exists():
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=cancel_once_started, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(DownloadCancelled):
        HubClient().download("tk93/V-Express", None, ["x.bin"], tmp_path, stop)
    assert time.monotonic() - started < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin." + "f" * 64 + ".incomplete"]
    monkeypatch.setattr(download, "CHILD_DOWNLOAD", "raise SystemExit('401 Client Error: repository is gated')")
    with pytest.raises(RuntimeError, match="repository is gated"):
        HubClient().download("tk93/V-Express", None, ["x.bin"], tmp_path, threading.Event())
