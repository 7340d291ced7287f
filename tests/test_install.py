"""Installing resnet_tuner beside the OpenCV a user already has (issue 13).

OpenCV's four wheels (opencv-python, opencv-python-headless,
opencv-contrib-python, opencv-contrib-python-headless) all install the same
`cv2` folder: two of them in one environment overwrite each other's files, and
uninstalling either breaks the other. So resnet_tuner requires none of them
(pyproject.toml) and offers the headless one as the `opencv` extra;
`resnet_tuner.data` says what to install when cv2 is missing or too old.

The slow test installs for real into new venvs, from the package index pip is
configured with (PyPI or its mirror), every other package pinned to the
version this test run has, so the resolver has nothing to choose but OpenCV.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

OPENCV_WHEELS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_HINT = 'pip install "resnet-tuner[opencv]"'

#: Runs in the new venv: cv2's GUI backend (headless wheels say NONE) and a
#: PNG and a JPEG through our decoder.
DECODE_CHECK = textwrap.dedent(
    """
    import json, re
    import cv2, numpy as np
    import resnet_tuner
    from resnet_tuner.data import decode_image

    image = np.zeros((20, 24, 3), np.uint8)
    image[:, :, 2] = 200  # BGR: red
    for ext in (".png", ".jpg"):
        ok, buffer = cv2.imencode(ext, image)
        rgb = decode_image(buffer.tobytes(), (8, 8))
        assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8, (ext, rgb.shape)
        assert abs(int(rgb[..., 0].mean()) - 200) <= 6 and rgb[..., 2].max() <= 6, ext
    gui = re.search(r"GUI:\\s*(\\S+)", cv2.getBuildInformation())
    print(json.dumps({"gui": gui and gui.group(1), "cv2": cv2.__file__,
                      "resnet_tuner": resnet_tuner.__file__}))
    """
)


def _opencv_requirements(requirements):
    return [r for r in map(Requirement, requirements) if r.name.lower() in OPENCV_WHEELS]


def _installed_opencv():
    """`{wheel: version}` of the OpenCV wheels installed here."""
    found = {}
    for name in OPENCV_WHEELS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def test_no_opencv_wheel_is_a_hard_requirement():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    hard = _opencv_requirements(project["dependencies"])
    assert not hard, (
        f"{hard} would install a second cv2 beside a user's opencv-python or "
        "opencv-contrib-python; offer it as an extra instead"
    )
    extra = _opencv_requirements(project["optional-dependencies"]["opencv"])
    assert [r.name for r in extra] == ["opencv-python-headless"]


def test_oldest_pins_are_the_declared_floors():
    """.ci/oldest.txt (CI's second run) pins each floor pyproject.toml declares, no lower."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    with open(os.path.join(REPO, ".ci", "oldest.txt")) as f:
        pins = dict(line.split("#")[0].strip().split("==") for line in f if "==" in line)
    pins = {name.lower(): Version(version) for name, version in pins.items()}
    extras = project["optional-dependencies"]
    for requirement in map(
        Requirement, project["dependencies"] + extras["opencv"] + extras["mlflow"]
    ):
        floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert len(floors) == 1, f"{requirement}: declare one >= floor"
        pin = pins.get(requirement.name.lower())
        assert pin is not None, f"{requirement.name} is not pinned in .ci/oldest.txt"
        floor = floors[0]
        assert (
            pin in requirement.specifier and pin.release[: len(floor.release)] == floor.release
        ), f"{requirement} but .ci/oldest.txt pins {pin}: raise them together"


@pytest.mark.parametrize(
    "fake_cv2, expected",
    [
        ("None", INSTALL_HINT),  # sys.modules[name] = None: `import cv2` raises ImportError
        (
            "types.SimpleNamespace(__version__='4.10.0', __file__='/x/cv2/__init__.py')",
            "cv2 4.10.0 is installed",
        ),
    ],
    ids=["missing", "too-old"],
)
def test_opencv_missing_or_too_old_says_what_to_install(fake_cv2, expected):
    code = f"import sys, types; sys.modules['cv2'] = {fake_cv2}; import resnet_tuner.data"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: resnet_tuner needs OpenCV 4.11 or newer"), last_line
    assert expected in last_line


def _run(*args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=1800, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_install_beside_opencv_python_keeps_one_cv2(tmp_path):
    """pip install resnet-tuner into a venv with opencv-python: that cv2 stays, and decodes."""
    here = _installed_opencv()
    if not here:
        pytest.skip("no OpenCV wheel in this environment to take the version from")
    opencv_version = next(iter(here.values()))  # the same version as this run's OpenCV

    # The package as pip would build it, outside the checkout (no build/ left there).
    source = tmp_path / "src"
    for name in ("resnet_tuner", "search_spaces"):
        shutil.copytree(
            os.path.join(REPO, name), source / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    # Every other distribution at this run's version (the oldest or newest stack).
    skip = {"resnet-tuner", "pip", "setuptools", "wheel", *OPENCV_WHEELS}
    pins = sorted(
        f"{d.metadata['Name']}=={d.version}"
        for d in importlib.metadata.distributions()
        if d.metadata["Name"] and d.metadata["Name"].lower().replace("_", "-") not in skip
    )
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    pip = [python, "-m", "pip", "install", "--quiet", "-c", str(constraints)]

    def installed_opencv():
        listed = json.loads(_run(python, "-m", "pip", "list", "--format=json", env=env))
        return {
            p["name"].lower(): p["version"] for p in listed if p["name"].lower() in OPENCV_WHEELS
        }

    def check_decoder():
        out = _run(python, "-c", DECODE_CHECK, env=env, cwd=tmp_path)
        return json.loads(out.strip().splitlines()[-1])

    # 1. The user's environment: opencv-python (with its GUI), then resnet-tuner.
    _run(*pip, f"opencv-python=={opencv_version}", env=env)
    gui_before = _run(
        python,
        "-c",
        "import cv2, re; print(re.search(r'GUI:\\s*(\\S+)', cv2.getBuildInformation()).group(1))",
        env=env,
    ).strip()
    _run(*pip, str(source), env=env)

    assert installed_opencv() == {"opencv-python": opencv_version}
    result = check_decoder()
    assert result["gui"] == gui_before != "NONE", result  # the user's cv2, not a headless copy
    assert result["resnet_tuner"].startswith(str(venv)), result
    assert result["cv2"].startswith(str(venv)), result

    # 2. Without any OpenCV: a clear message, then the `opencv` extra fixes it.
    _run(python, "-m", "pip", "uninstall", "--quiet", "--yes", "opencv-python", env=env)
    failed = subprocess.run(
        [python, "-c", "import resnet_tuner.data"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert failed.returncode != 0 and INSTALL_HINT in failed.stderr, failed.stderr
    _run(*pip, f"{source}[opencv]", f"opencv-python-headless=={opencv_version}", env=env)
    assert installed_opencv() == {"opencv-python-headless": opencv_version}
    assert check_decoder()["gui"] == "NONE"
