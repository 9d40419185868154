"""Registry readiness: pyproject.toml follows the Comfy Registry's rules and agrees with requirements.txt."""
import re
import tomllib
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-r")]


def test_dependencies_are_requirements_txt_and_never_torch():
    dependencies = pyproject()["project"]["dependencies"]
    assert sorted(dependencies) == sorted(requirement_lines(REPO / "requirements.txt"))
    names = {re.split(r"[<>=!~\[ ;]", requirement)[0].lower() for requirement in dependencies}
    assert not names & {"torch", "torchvision", "torchaudio"}  # ComfyUI's own torch must stay


def test_project_table_follows_the_registry_rules():
    project = pyproject()["project"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", name)
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["license"]
    assert project["urls"]["Repository"].startswith("https://github.com/")


def test_tool_comfy_table_has_publisher_display_name_icon_and_includes():
    comfy = pyproject()["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"]
    icon = comfy["Icon"]
    repository = pyproject()["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repository}/main/"
    assert icon.startswith(prefix)
    with Image.open(REPO / icon.removeprefix(prefix)) as picture:  # the icon ships in the repository
        assert picture.width == picture.height <= 400
    for folder in comfy["includes"]:
        assert (REPO / folder).is_dir(), folder


def test_requires_comfyui_is_the_packs_minimum():
    minimum = re.search(r'MINIMUM_COMFYUI = "([\d.]+)"', (REPO / "nodes" / "__init__.py").read_text()).group(1)
    assert pyproject()["tool"]["comfy"]["requires-comfyui"] == f">={minimum}"


def test_every_workflow_has_a_template_thumbnail():
    """ComfyUI's template browser shows workflows/<name>.jpg for workflows/<name>.json
    (make them with tools/screenshot_workflows.py)."""
    for workflow in sorted((REPO / "workflows").glob("*.json")):
        thumbnail = workflow.with_suffix(".jpg")
        assert thumbnail.is_file(), f"{thumbnail.name} is missing"
        with Image.open(thumbnail) as picture:
            assert picture.format == "JPEG" and picture.size == (512, 384)
