"""Fetching a known model from the Hugging Face Hub into `<root>/<name>/`, on first use.

Only the files V-Express loads are fetched (about 9.7 GB of the repository instead of all of it):
the five V-Express networks, the SD1.5 UNet config, the VAE and wav2vec2 (config + one weights
file each, safetensors preferred), and optionally insightface's buffalo_l pack. Files land in a
hidden `.<name>.download/` folder (kept after a failure or a cancel, so the next attempt resumes:
finished files are never fetched again, and huggingface_hub < 1.0 also continues a partial file
from its last 10 MB chunk), are assembled into the published layout in `.<name>.assemble/`, and only a
complete, strictly loadable folder is renamed to `<name>/`: a half model never appears under its
name. Optionally the five networks are stored as fp16 safetensors (about half the disk).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import FOLDER_FILES, WEIGHT_NAMES, CheckpointError, load_vexpress_networks, read_state_dict, resolve_model_paths
from .saving import cast_state

log = logging.getLogger(__name__)

PUBLISHED_PREFIX = "model_ckpts/"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
POLL_SECONDS = 0.25
OPTIONAL_WEIGHTS = ("motion_module",)  # the denoising UNet file may carry the motion keys itself
INSIGHTFACE_FOLDER = "insightface_models/models/buffalo_l"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class KnownModel:
    """A model the loader offers by name even before it is on disk."""

    name: str
    repo_id: str
    revision: str | None = None
    description: str = ""


KNOWN_MODELS: dict[str, KnownModel] = {
    "V-Express": KnownModel("V-Express", "tk93/V-Express", description="the published V-Express weights (Tencent AI Lab)"),
}


class DownloadError(OSError):
    """The model could not be fetched; the message says what to do."""


class DownloadCancelled(DownloadError):
    """The user cancelled; the partial download is kept for the next attempt."""


@dataclass(frozen=True)
class RemoteFile:
    repo_path: str  # path in the Hugging Face repository
    target: str  # path inside the model folder (the published model_ckpts layout)
    size: int | None


def known_model(name: str) -> KnownModel:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise DownloadError(f"no known model named {name!r}; known: {sorted(KNOWN_MODELS)}") from None


def layout_path(repo_path: str) -> str:
    """Where a repository file goes in the model folder. The repository holds `model_ckpts/...`
    and the five network files at its top level (the published README moves them to v-express/)."""
    path = PurePosixPath(repo_path)
    if str(path.parent) == "." and path.stem in WEIGHT_NAMES:
        return f"v-express/{path.name}"
    return repo_path[len(PUBLISHED_PREFIX):] if repo_path.startswith(PUBLISHED_PREFIX) else repo_path


def needed_files(repo_files: Mapping[str, int | None], insightface: bool = False) -> list[RemoteFile]:
    """The repository files V-Express loads (repo path -> size in, selection out); raises when one is missing."""
    by_target: dict[str, tuple[str, int | None]] = {}
    for repo_path, size in repo_files.items():
        by_target.setdefault(layout_path(repo_path), (repo_path, size))

    def pick(candidates: list[str]) -> RemoteFile | None:
        for target in candidates:
            if target in by_target:
                return RemoteFile(by_target[target][0], target, by_target[target][1])
        return None

    chosen: list[RemoteFile | None] = []
    missing: list[str] = []
    wanted = [(f"v-express/{name}", [f"v-express/{name}{s}" for s in WEIGHT_SUFFIXES], name in OPTIONAL_WEIGHTS)
              for name in WEIGHT_NAMES]
    for folder, (fixed, weights) in FOLDER_FILES.items():
        wanted += [(f"{folder}/{name}", [f"{folder}/{name}"], False) for name in fixed]
        if weights:
            wanted.append((f"{folder}/{weights[0]}", [f"{folder}/{w}" for w in weights], False))
    for label, candidates, optional in wanted:
        found = pick(candidates)
        if found is None and not optional:
            missing.append(label)
        chosen.append(found)
    if insightface:
        onnx = sorted(t for t in by_target if t.startswith(INSIGHTFACE_FOLDER + "/") and t.endswith(".onnx"))
        if not onnx:
            missing.append(f"{INSIGHTFACE_FOLDER}/*.onnx")
        chosen += [pick([target]) for target in onnx]
    if missing:
        raise DownloadError(f"the repository lacks files V-Express needs: {', '.join(missing)}")
    return [remote for remote in chosen if remote is not None]


def total_size(files: list[RemoteFile]) -> int:
    return sum(remote.size or 0 for remote in files)


# The download runs in a child process: stopping it is then immediate and the same for every
# huggingface_hub version (older ones resume a partial file from its bytes, newer ones restart it).
CHILD_DOWNLOAD = """
import json, sys
from huggingface_hub import snapshot_download
args = json.loads(sys.argv[1])
snapshot_download(args["repo_id"], revision=args["revision"], allow_patterns=args["patterns"], local_dir=args["local_dir"], max_workers=4)
"""
# huggingface_hub >= 1.x writes each attempt to `<name>.<8 hex>.incomplete` and deletes it itself unless
# killed; such a file can never be resumed, so a stopped download removes it.
UNRESUMABLE_PARTIAL = re.compile(r"\.[0-9a-f]{8}\.incomplete$")


class HubClient:
    """The two huggingface_hub calls the download makes (tests pass a fake with the same methods)."""

    def list_files(self, repo_id: str, revision: str | None) -> dict[str, int | None]:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        return {sibling.rfilename: sibling.size for sibling in info.siblings}

    def download(self, repo_id: str, revision: str | None, allow_patterns: list[str], local_dir: Path,
                 stop: threading.Event) -> None:
        """snapshot_download in a child process, terminated as soon as `stop` is set."""
        arguments = json.dumps({"repo_id": repo_id, "revision": revision, "patterns": allow_patterns, "local_dir": str(local_dir)})
        environment = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        with tempfile.TemporaryFile() as errors:
            child = subprocess.Popen([sys.executable, "-c", CHILD_DOWNLOAD, arguments], stdout=subprocess.DEVNULL,
                                     stderr=errors, env=environment)
            while child.poll() is None:
                if stop.wait(POLL_SECONDS):
                    child.terminate()
                    child.wait()
                    for partial in Path(local_dir).rglob("*.incomplete"):
                        if UNRESUMABLE_PARTIAL.search(partial.name):
                            partial.unlink(missing_ok=True)
                    raise DownloadCancelled("download cancelled")
            if child.returncode != 0:
                errors.seek(0)
                lines = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
                raise RuntimeError(lines[-1] if lines else f"the download process exited with {child.returncode}")


def manual_steps(model: KnownModel, target: Path) -> str:
    patterns = " ".join(f'"{p}"' for p in ("*.bin", "model_ckpts/stable-diffusion-v1-5/unet/config.json",
                                           "model_ckpts/sd-vae-ft-mse/*", "model_ckpts/wav2vec2-base-960h/*"))
    return (
        f"To install it by hand, on a machine with internet access either run\n"
        f"  python -m vexpress_core download {target.parent} --name {target.name}\n"
        f"and copy the folder it makes to {target}, or run\n"
        f"  hf download {model.repo_id} --local-dir {model.name}-repo --include {patterns}\n"
        f"(`huggingface-cli download` with older huggingface_hub), then move {model.name}-repo/model_ckpts to {target} and "
        f"{model.name}-repo/*.bin into {target / 'v-express'}/. The folder must hold v-express/*.bin, "
        f"stable-diffusion-v1-5/unet/config.json, sd-vae-ft-mse/ and wav2vec2-base-960h/."
    )


def disk_bytes(folder: Path) -> int:
    """Bytes of every file under `folder`, partial downloads included."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            try:
                total += os.path.getsize(os.path.join(dirpath, filename))
            except OSError:
                pass  # a file renamed while we walk
    return total


_workers: dict[str, threading.Thread] = {}


def fetch_files(hub, model: KnownModel, files: list[RemoteFile], folder: Path, progress: Progress | None,
                cancelled: Callable[[], bool] | None) -> None:
    """Download `files` into `folder` on a worker thread while this thread reports bytes and checks cancel.

    Progress and cancel run on the caller's thread (ComfyUI's progress hook needs the executing node's
    context). On cancel - or any exception from `progress` - the worker is told to stop and this call
    returns at once."""
    key = str(folder.resolve())
    previous = _workers.get(key)
    if previous is not None:
        previous.join()  # an earlier, cancelled attempt on the same folder must finish first
    stop = threading.Event()
    outcome: dict[str, BaseException] = {}

    def work() -> None:
        try:
            hub.download(model.repo_id, model.revision, [f.repo_path for f in files], folder, stop)
        except BaseException as error:  # reported on the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=work, name=f"vexpress-download-{model.name}", daemon=True)
    _workers[key] = worker
    worker.start()
    total = total_size(files)
    try:
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            if progress is not None:
                progress(min(disk_bytes(folder), total), total)
            if cancelled is not None and cancelled():
                raise DownloadCancelled(f"download of {model.repo_id} cancelled; the {disk_bytes(folder)} bytes so far are kept in {folder} and the next attempt resumes")
    except BaseException:
        stop.set()
        raise
    _workers.pop(key, None)
    error = outcome.get("error")
    if isinstance(error, DownloadCancelled):
        raise error
    if error is not None:
        raise DownloadError(f"download of {model.repo_id} failed ({type(error).__name__}: {error}); "
                            f"the partial download is kept in {folder} - run again to resume") from error


def check_sizes(files: list[RemoteFile], folder: Path) -> None:
    wrong = []
    for remote in files:
        path = folder / remote.repo_path
        found = path.stat().st_size if path.is_file() else None
        if found is None or (remote.size is not None and found != remote.size):
            wrong.append(f"{remote.repo_path} ({'absent' if found is None else found} of {remote.size} bytes)")
    if wrong:
        raise DownloadError(f"incomplete download in {folder}: {', '.join(wrong)}")


def assemble(files: list[RemoteFile], download_dir: Path, staging: Path) -> None:
    """Move the downloaded files into the published layout under `staging`."""
    if staging.exists():
        shutil.rmtree(staging)
    for remote in files:
        destination = staging / remote.target
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(download_dir / remote.repo_path, destination)


def weights_bytes(folder: Path) -> int:
    return disk_bytes(folder / "v-express")


def convert_to_fp16(model_dir: Path) -> tuple[int, int]:
    """Store the `.bin` networks of `model_dir` as fp16 safetensors (position codes stay fp32): each file
    must read back exactly as cast, then the whole set must load strictly as the loader loads it; the
    `.bin` files are removed only then. Returns the v-express/ folder's bytes (before, after)."""
    sources = [path for path in resolve_model_paths(model_dir).weights.values() if path.suffix == ".bin"]
    before = weights_bytes(model_dir)
    converted = []
    try:
        for source in sources:
            tensors = cast_state(read_state_dict(source), torch.float16)
            target = source.with_suffix(".safetensors")
            save_file(tensors, str(target))
            converted.append(target)
            back = load_file(str(target))
            if back.keys() != tensors.keys() or not all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items()):
                raise CheckpointError(f"{target}: the written fp16 file does not read back as written")
            del tensors, back
        load_vexpress_networks(resolve_model_paths(model_dir), dtype=torch.float16)  # .safetensors are found first
    except BaseException:
        for target in converted:
            target.unlink(missing_ok=True)
        raise
    for source in sources:
        source.unlink()
    return before, weights_bytes(model_dir)


def ensure_model(root: str | Path, name: str = "V-Express", *, fp16: bool = False, insightface: bool = False,
                 progress: Progress | None = None, cancelled: Callable[[], bool] | None = None, hub=None) -> Path:
    """`<root>/<name>/` ready to load: returned as is when complete, otherwise fetched from the known
    model's repository. `progress(done_bytes, total_bytes)` is called a few times per second and
    `cancelled()` is polled as often (raises DownloadCancelled)."""
    model = known_model(name)
    root = Path(root).expanduser()
    target = root / name
    if target.exists():
        try:
            resolve_model_paths(target)
        except CheckpointError as error:
            raise DownloadError(f"{target} exists but is not a complete model ({error}); move it away to fetch "
                                f"{model.repo_id} afresh") from error
        return target
    hub = hub or HubClient()
    try:
        listing = hub.list_files(model.repo_id, model.revision)
    except Exception as error:  # no network, offline mode, proxy, DNS: all end in the same advice
        raise DownloadError(f"cannot reach the Hugging Face Hub to fetch {model.repo_id} into {target} "
                            f"({type(error).__name__}: {error}).\n{manual_steps(model, target)}") from error
    files = needed_files(listing, insightface)
    download_dir, staging = root / f".{name}.download", root / f".{name}.assemble"
    download_dir.mkdir(parents=True, exist_ok=True)
    log.info("fetching %d files (%.2f GB) of %s into %s", len(files), total_size(files) / 1e9, model.repo_id, target)
    fetch_files(hub, model, files, download_dir, progress, cancelled)
    check_sizes(files, download_dir)
    assemble(files, download_dir, staging)
    resolve_model_paths(staging)
    if fp16:
        before, after = convert_to_fp16(staging)
        log.info("stored the V-Express networks as fp16 safetensors: %.2f GB -> %.2f GB", before / 1e9, after / 1e9)
    os.replace(staging, target)
    shutil.rmtree(download_dir, ignore_errors=True)
    return target
