#!/usr/bin/env bash
# The GPU check (issue 19), for a CUDA machine, from the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# 1. the test suite with the GPU visible (the nodes and the CLI pick CUDA when it is there);
# 2. SD1.5-size random weights at SIZE x SIZE: fp16 and bf16; eager, torch.compile and low-VRAM
#    mode; s/frame and peak VRAM (benchmarks/gpu_paths.py);
# 3. the side-by-side with the published pipeline at SIZE x SIZE, on the GPU in fp16, with the same
#    SD1.5-size random weights (benchmarks/side_by_side.py): needs the published code, which the
#    GPU machine cannot fetch: PUBLISHED=/path/to/V-Express (tencent-ailab/V-Express) and
#    PUBLISHED_PYTHON=/path/to/its/venv/bin/python (its requirements.txt); skipped without them;
# 4. the speed presets and options on the toy model (benchmarks/presets.py --device cuda).
#
# Everything lands in OUT_DIR (default gpu_check_out): each step's log and table, and
# gpu_check.md, one Markdown table of all of them. Knobs (environment): PYTHON (python3), SIZE (512),
# STEPS (8; s/frame scales with it), SPEECH_SECONDS (2), FRAMES (48, side-by-side),
# PRESET_REPEATS (1), TEST_TIMEOUT (3600 s), SKIP (steps to leave out, e.g. "tests side_by_side").
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
PY=${PYTHON:-python3}
SIZE=${SIZE:-512}
STEPS=${STEPS:-8}
SPEECH_SECONDS=${SPEECH_SECONDS:-2}
FRAMES=${FRAMES:-48}
PRESET_REPEATS=${PRESET_REPEATS:-1}
TEST_TIMEOUT=${TEST_TIMEOUT:-3600}
SKIP=${SKIP:-}
mkdir -p "$OUT"

skipped() { [[ " $SKIP " == *" $1 "* ]]; }

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to $PY: this check is for a GPU machine" >&2
    exit 2
fi
DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)")
echo "device: $DEVICE" | tee "$OUT/device.txt"

if ! skipped tests; then
    echo "== 1. test suite"
    start=$(date +%s)
    timeout "$TEST_TIMEOUT" "$PY" -m pytest -q tests > "$OUT/tests.log" 2>&1
    echo "exit $?, $(( $(date +%s) - start )) s" > "$OUT/tests.status"
    tail -n 1 "$OUT/tests.log"
fi

if ! skipped gpu_paths; then
    echo "== 2. SD1.5-size random weights at ${SIZE}x${SIZE}"
    "$PY" benchmarks/gpu_paths.py --size "$SIZE" --steps "$STEPS" --seconds "$SPEECH_SECONDS" \
        2> "$OUT/gpu_paths.err" | tee "$OUT/gpu_paths.md"
fi

if ! skipped side_by_side; then
    echo "== 3. side by side with the published pipeline at ${SIZE}x${SIZE}"
    if [[ -n "${PUBLISHED:-}" && -f "${PUBLISHED}/pipelines/v_express_pipeline.py" ]]; then
        MODEL="$OUT/sd15_random_model"
        [[ -d "$MODEL/v-express" ]] || "$PY" -m vexpress_core make-tiny-models "$MODEL" --sd15 > "$OUT/make_model.log" 2>&1
        "$PY" benchmarks/side_by_side.py "$PUBLISHED" --published-python "${PUBLISHED_PYTHON:-$PY}" --model "$MODEL" \
            --sizes "$SIZE" --frames "$FRAMES" --steps "$STEPS" --device cuda --dtype fp16 \
            2> "$OUT/side_by_side.err" | tee "$OUT/side_by_side.md"
    else
        echo "skipped: set PUBLISHED to a checkout of tencent-ailab/V-Express (and PUBLISHED_PYTHON to its venv's python)" \
            | tee "$OUT/side_by_side.skipped"
    fi
fi

if ! skipped presets; then
    echo "== 4. speed presets and options on the toy model"
    "$PY" benchmarks/presets.py --device cuda --repeats "$PRESET_REPEATS" --picture "$OUT/speed_presets_gpu.png" \
        2> "$OUT/presets.err" | tee "$OUT/presets.md"
fi

# One table of every step: check | configuration | time | peak VRAM | other figures.
"$PY" - "$OUT" <<'PYTHON'
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
device = (out / "device.txt").read_text().strip().removeprefix("device: ") if (out / "device.txt").exists() else "?"
lines = [f"GPU check on {device}", "", "| check | configuration | time | peak VRAM MiB | other figures |", "|---|---|---|---|---|"]


def markdown_rows(path: Path):
    """(header, cells) of every row of the Markdown table(s) in a step's output."""
    header = None
    for line in path.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            yield header, cells


if (out / "tests.status").exists():
    summary = (out / "tests.log").read_text().strip().splitlines()[-1:] or ["no output"]
    lines.append(f"| test suite | GPU visible | {(out / 'tests.status').read_text().strip()} | - | {summary[0]} |")
for step, title in (("gpu_paths", "SD1.5-size random weights"), ("side_by_side", "side by side with the published pipeline"),
                    ("presets", "toy model: speed options and presets")):
    if (out / f"{step}.skipped").exists():
        lines.append(f"| {title} | - | - | - | {(out / f'{step}.skipped').read_text().strip()} |")
    if not (out / f"{step}.md").exists():
        continue
    found = False
    for header, cells in markdown_rows(out / f"{step}.md"):
        found = True
        time = next((i for i, name in enumerate(header) if re.search(r"s/frame|s/clip|generation s", name)), None)
        vram = next((i for i, name in enumerate(header) if "VRAM" in name), None)
        config_end = time if time is not None else 1
        config = ", ".join(cells[:config_end])
        figures = "; ".join(f"{name} {cells[i]}" for i, name in enumerate(header)
                            if i >= config_end and i not in (time, vram) and i < len(cells))
        time_text = f"{cells[time]} {header[time]}" if time is not None else "-"
        lines.append(f"| {title} | {config} | {time_text} | {cells[vram] if vram is not None else '-'} | {figures} |")
    if not found:
        lines.append(f"| {title} | - | - | - | no table: see {step}.err |")
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYTHON
echo "wrote $OUT/gpu_check.md"
