"""A local stand-in for the Hugging Face Hub serving a V-Express model folder as `tk93/V-Express`.

For checking the real download path (huggingface_hub's model_info + snapshot_download, resume with
HTTP ranges, byte progress, cancel) without the network and without 10 GB:

    python tools/fake_hub.py MODEL_DIR --port 8765 --rate 2000000 &   # e.g. a make-tiny-models folder
    HF_ENDPOINT=http://127.0.0.1:8765 python -m vexpress_core download /tmp/models

MODEL_DIR (published layout) is served the way tk93/V-Express is laid out: the five network files at
the top level and everything else under model_ckpts/, plus a few files V-Express never loads.
`--rate` limits bytes per second per request so progress and cancel can be watched.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNUSED = {"README.md": b"# V-Express (fake hub)\n", "model_ckpts/wav2vec2-base-960h/tf_model.h5": b"\0" * 4096}


def published_files(model_dir: Path) -> dict[str, bytes]:
    files = dict(UNUSED)
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and ".cache" not in p.parts):
        relative = path.relative_to(model_dir).as_posix()
        key = relative.removeprefix("v-express/") if relative.startswith("v-express/") else f"model_ckpts/{relative}"
        files[key] = path.read_bytes()
    return files


def handler(repo_id: str, files: dict[str, bytes], rate: float):
    etags = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    resolve = re.compile(rf"^/{re.escape(repo_id)}/resolve/[^/]+/(.+)$")
    info = re.compile(rf"^/api/models/{re.escape(repo_id)}(/revision/[^/?]+)?$")
    tree = re.compile(rf"^/api/models/{re.escape(repo_id)}/tree/[^/?]+(/.*)?$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            print(f"fake hub: {self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)

        def send_json(self, payload) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            self.wfile.write(body)

        def file_request(self, send_body: bool) -> None:
            name = resolve.match(self.path.split("?")[0]).group(1)
            if name not in files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = files[name]
            start = 0
            ranged = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged.group(1))
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Length", str(len(data) - start))
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{etags[name]}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            if not send_body:
                return
            chunk = 1 << 16
            for offset in range(start, len(data), chunk):
                try:
                    self.wfile.write(data[offset:offset + chunk])
                except (BrokenPipeError, ConnectionResetError):
                    return
                if rate:
                    time.sleep(chunk / rate)

        def do_HEAD(self):
            self.file_request(send_body=False)

        def do_GET(self):
            path = self.path.split("?")[0]
            if info.match(path):
                siblings = [{"rfilename": name, "size": len(data), "blobId": etags[name][:40]} for name, data in files.items()]
                self.send_json({"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False, "siblings": siblings})
            elif tree.match(path):
                entries = [{"type": "file", "path": name, "size": len(data), "oid": etags[name][:40]} for name, data in files.items()]
                self.send_json(entries)
            elif resolve.match(path):
                self.file_request(send_body=True)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--repo", default="tk93/V-Express")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rate", type=float, default=0.0, help="bytes per second per request (0 = unlimited)")
    args = parser.parse_args()
    files = published_files(args.model_dir)
    print(f"fake hub: {args.repo} with {len(files)} files ({sum(map(len, files.values()))} bytes) on port {args.port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), handler(args.repo, files, args.rate)).serve_forever()


if __name__ == "__main__":
    main()
