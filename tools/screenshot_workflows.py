"""Screenshots of the example workflows as ComfyUI's page shows them, plus template-browser thumbnails.

Needs a running ComfyUI with this pack installed, Chromium (Debian: `apt-get install chromium`) and
`pip install playwright` (the system Chromium is used; no browser download):

    python tools/screenshot_workflows.py --url http://127.0.0.1:8188            # every workflows/*.json
    python tools/screenshot_workflows.py --only vexpress_photo_audio_fix_face   # redo one
    python tools/screenshot_workflows.py --only --templates ComfyUI-V-Express   # the template browser only
    python tools/screenshot_workflows.py --preview vexpress_photo_audio_fix_face  # run it, photograph the live preview

Writes docs/images/workflows/<name>.png (docs/workflows.md) and workflows/<name>.jpg (the thumbnail ComfyUI's
template browser loads for a custom node's workflow).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CANVAS_BOX = (64, 80, 1920, 1080)  # left, top, right, bottom of the graph canvas in a 1920x1080 page
FIT_VIEW = """
([margin, top, types]) => {
  const canvas = window.app.canvas;
  const nodes = window.app.graph._nodes.filter((node) => !types.length || types.includes(node.type));
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const node of nodes) {
    const title = window.LiteGraph ? window.LiteGraph.NODE_TITLE_HEIGHT : 30;
    x0 = Math.min(x0, node.pos[0]); y0 = Math.min(y0, node.pos[1] - title);
    x1 = Math.max(x1, node.pos[0] + node.size[0]); y1 = Math.max(y1, node.pos[1] + node.size[1]);
  }
  const element = canvas.canvas;
  const width = element.clientWidth, height = element.clientHeight - top;
  const scale = Math.min((width - 2 * margin) / (x1 - x0), (height - 2 * margin) / (y1 - y0), types.length ? 2.0 : 1.2);
  canvas.ds.scale = scale;
  canvas.ds.offset[0] = (width - scale * (x1 - x0)) / 2 / scale - x0;
  canvas.ds.offset[1] = (top + (height - scale * (y1 - y0)) / 2) / scale - y0;
  canvas.setDirty(true, true);
  return nodes.length;
}
"""


SET_WIDGETS = """
(settings) => {
  for (const [type, name, value] of settings) {
    const node = window.app.graph._nodes.find((candidate) => candidate.type === type);
    node.widgets.find((widget) => widget.name === name).value = value;
  }
  const api = window.comfyAPI.api.api;
  window.__previews = 0;
  api.addEventListener("b_preview", () => { window.__previews += 1; });
}
"""


def capture_preview(page, workflow: Path, settings: list, target: Path, width: int) -> None:
    """Run `workflow` from the page with `settings` ([node type, widget, value], ...) and photograph the
    sampler node once its live preview shows."""
    page.evaluate("async ([graph, name]) => { await window.app.loadGraphData(graph, true, true, name); }",
                  [json.loads(workflow.read_text()), workflow.stem])
    page.wait_for_timeout(1500)
    page.evaluate(SET_WIDGETS, settings)
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    page.wait_for_function("window.__previews >= 2", timeout=900_000, polling=1000)
    page.evaluate(FIT_VIEW, [60, 40, ["VExpressSampler", "VExpressLoadModels"]])
    page.wait_for_timeout(1500)
    raw = target.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    small_png(raw, target, width)
    raw.unlink()
    print(f"live preview -> {target}")


def capture_templates(page, module: str, target: Path, width: int) -> None:
    """ComfyUI's template browser opened on this pack's workflows."""
    page.get_by_text("Templates", exact=True).first.click()
    page.wait_for_timeout(3000)
    page.get_by_text(module).first.click()
    page.wait_for_timeout(4000)
    raw = target.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    small_png(raw, target, width)
    raw.unlink()
    page.keyboard.press("Escape")
    print(f"template browser -> {target}")


def small_png(source: Path, target: Path, width: int) -> None:
    with Image.open(source) as picture:
        picture = picture.convert("RGB")
        picture = picture.resize((width, round(picture.height * width / picture.width)), Image.LANCZOS)
        picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def thumbnail(source: Path, target: Path, size: tuple[int, int] = (512, 384)) -> None:
    with Image.open(source) as picture:
        picture = picture.convert("RGB").crop(CANVAS_BOX)  # the graph, without ComfyUI's menus
        scale = max(size[0] / picture.width, size[1] / picture.height)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.LANCZOS)
        left, top = (picture.width - size[0]) // 2, (picture.height - size[1]) // 2
        picture.crop((left, top, left + size[0], top + size[1])).save(target, quality=82, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--workflows", type=Path, default=REPO / "workflows")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "workflows")
    parser.add_argument("--thumbs", type=Path, default=REPO / "workflows", help="where the template thumbnails go")
    parser.add_argument("--only", nargs="*", help="workflow names (without .json)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--size", default="1920x1080", help="browser viewport")
    parser.add_argument("--png-width", type=int, default=1440, help="width of the PNGs in docs/workflows.md")
    parser.add_argument("--templates", metavar="FOLDER", help="also photograph the template browser on this pack "
                        "(FOLDER: the pack's folder name under custom_nodes) into OUT/../template_browser.png")
    parser.add_argument("--preview", metavar="WORKFLOW", help="instead: run this workflow from the page (64x64, 2 steps, "
                        "the 2 s speech file) and photograph the sampler's live preview into OUT/../live_preview.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    width, height = map(int, args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    paths = sorted(args.workflows.glob("*.json"))
    if args.only is not None:
        paths = [p for p in paths if p.stem in args.only]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        page.goto(args.url)
        page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
        page.wait_for_timeout(3000)
        page.keyboard.press("Escape")  # a first-run dialog (templates, release notes), if any
        page.add_style_tag(content=".minimap-main-container { display: none !important; }")
        # No FPS/node-count overlay, and node text drawn at every zoom (LiteGraph drops it when text gets small).
        page.evaluate("() => { window.app.canvas.show_info = false; window.app.canvas.min_font_size_for_lod = 0; }")
        if args.preview:
            settings = [["VExpressLoadReference", "width", 64], ["VExpressLoadReference", "height", 64],
                        ["VExpressSampler", "steps", 2], ["LoadAudio", "audio", "vexpress_speech_2s.wav"]]
            capture_preview(page, args.workflows / f"{args.preview}.json", settings, args.out.parent / "live_preview.png", args.png_width)
            paths = []
        for path in paths:
            page.evaluate("async ([graph, name]) => { await window.app.loadGraphData(graph, true, true, name); }",
                          [json.loads(path.read_text()), path.stem])
            page.wait_for_timeout(1500)
            page.keyboard.press("Escape")
            count = page.evaluate(FIT_VIEW, [40, 40, []])
            page.wait_for_timeout(800)
            raw = args.out / f"{path.stem}.raw.png"
            page.screenshot(path=str(raw))
            small_png(raw, args.out / f"{path.stem}.png", args.png_width)
            thumbnail(raw, args.thumbs / f"{path.stem}.jpg")
            raw.unlink()
            print(f"{path.stem}: {count} nodes -> {args.out / (path.stem + '.png')}, {args.thumbs / (path.stem + '.jpg')}")
        if args.templates:
            capture_templates(page, args.templates, args.out.parent / "template_browser.png", args.png_width)
        browser.close()


if __name__ == "__main__":
    main()
