"""The project's own files stay honest: set-up files agree, notebooks follow the convention."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_what_make_lab_installs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    major_minor = tuple(int(x) for x in python.split("=")[1].split(".")[:2])
    minimum = tuple(int(x) for x in re.findall(r"\d+", PYPROJECT["project"]["requires-python"])[:2])
    assert major_minor >= minimum
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    editable = next(p for p in pip_section if p.startswith("-e"))
    extras = set(re.search(r"\[(.*)\]", editable).group(1).split(","))
    assert extras == set(_makefile_extras().split(",")), "environment.yml and `make lab` install different extras"
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])
    assert "-c labkit/tested_versions.txt" in pip_section


def _makefile_extras() -> str:
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[$(EXTRAS)]"' in makefile and '"labkit[$(EXTRAS)] @ file://' in makefile
    return re.search(r"^EXTRAS := ([a-z,]+)$", makefile, re.M).group(1)


def test_pip_users_colab_and_the_notebook_tests_install_the_same_thing():
    """Issue 23: the Colab cell of every notebook and README's pip line are exactly what `make notebooks` runs on
    (labkit built as a wheel with these extras)."""
    from labkit import course

    assert course.EXTRAS == _makefile_extras()
    assert course.PIP_REQUIREMENT == f"labkit[{course.EXTRAS}] @ git+{course.REPO_URL}"
    assert course.PIP_INSTALL in (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        first = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert "".join(first["source"]) == course.COLAB_CELL.rstrip("\n"), f"{path.name}: the first cell is course.COLAB_CELL"


def test_tested_versions_satisfy_pyproject_ranges():
    from packaging.requirements import Requirement

    from labkit.versions import tested_versions

    pins = tested_versions()
    reqs = list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        reqs += extra
    for text in reqs:
        req = Requirement(text)
        if req.name in pins:
            assert req.specifier.contains(pins[req.name], prereleases=True), f"{req} excludes tested {pins[req.name]}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make lab" in (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"


def test_course_notebooks_exist_with_their_fixed_names():
    names = {p.stem for p in NOTEBOOKS}
    assert "00_basecamp" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_follows_the_convention(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    assert "labkit.course.start(" in text
    assert re.search(r"(?i)objectives", "".join(nb["cells"][0]["source"])), "objectives at the top"
    assert "### BEGIN SOLUTION" in text and "check(" in text, "at least one exercise with a check"
    assert re.search(r"(?i)recap", "".join(nb["cells"][-1]["source"])), "a recap at the end"
    code_text = "\n".join("".join(c["source"]) for c in code)
    assert not re.search(r"""["']cuda(:\d)?["']""", code_text), "no hard-coded 'cuda': read the device from the profile"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_readme_has_a_colab_badge_per_notebook(path):
    readme = (ROOT / "README.md").read_text()
    assert f"notebooks/{path.name}" in readme and "colab-badge.svg" in readme
