#!/usr/bin/env bash
# Does `pip install -r requirements.txt` leave an existing torch alone? Asks pip's resolver (dry run, nothing
# installed) in a throwaway venv that holds only the torch distribution of the Python given as $1
# (default: python3) - the situation of a ComfyUI venv. Needs the package index; prints the plan.
set -euo pipefail
PYTHON=${1:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(mktemp -d)/venv
"$PYTHON" -m venv "$VENV"
TORCH_INFO=$("$PYTHON" -c "import importlib.metadata as m; d = m.distribution('torch'); print(d._path)")
SITE=$("$VENV/bin/python" -c "import site; print(site.getsitepackages()[0])")
cp -r "$TORCH_INFO" "$SITE/"  # the metadata is what the resolver sees; the code is not needed for a dry run
"$VENV/bin/pip" --isolated install --quiet --dry-run --report "$VENV/report.json" -r "$REPO/requirements.txt"
"$VENV/bin/python" - "$VENV/report.json" <<'PY'
import json, sys
plan = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.load(open(sys.argv[1]))["install"]]
import importlib.metadata as m
print(f"torch installed: {m.version('torch')}; pip would install {len(plan)} packages:")
print(", ".join(f"{n}=={v}" for n, v in sorted(plan)))
replaced = [n for n, _ in plan if n.lower() in ("torch", "torchvision", "torchaudio")]
print(f"FAIL: pip would replace {replaced}" if replaced else "OK: torch is kept")
sys.exit(1 if replaced else 0)
PY
