"""labkit.paths and the installed package: a wheel built from this checkout ships every file labkit and the
notebooks read (issue 23: committed GPU results missing from a pip install made notebook 08 raise and the
H100/H200 comparisons of 05 and 06 vanish), and an installed labkit finds them from any folder."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from labkit import paths
from labkit.errors import LabkitError

ROOT = Path(__file__).resolve().parent.parent
# Files of labkit/ or datasets/ that are not package data, each with the reason.
NOT_SHIPPED = {
    "datasets/lora_task/build.py": "the script that wrote the task's JSONL files; labkit reads only the JSONL",
}


def _tracked(*folders: str) -> list[str]:
    """Files git tracks (or would: new, not ignored) under `folders`; every file there outside a git checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *folders], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode == 0:
        names = set(listed.stdout.split())
    else:  # an unpacked source archive
        names = {p.relative_to(ROOT).as_posix() for folder in folders for p in (ROOT / folder).rglob("*")}
    return sorted(f for f in names if (ROOT / f).is_file() and "__pycache__" not in f and not f.endswith(".pyc"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """labkit built as a wheel from this checkout, as `pip install` and `make notebooks` build it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "wheel", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(ROOT)], check=True, cwd=out, capture_output=True)
    (built,) = out.glob("labkit-*.whl")
    return built


def test_the_checkout_reads_its_own_datasets_folder(monkeypatch):
    monkeypatch.delenv("LABKIT_DATASETS", raising=False)
    assert paths.datasets_dir() == ROOT / "datasets"
    assert paths.results_dir() == ROOT / "datasets" / "results"
    assert paths.shipped_file("results", "llama_cpp_cuda.json").is_file()


def test_a_missing_shipped_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATASETS", str(tmp_path))
    with pytest.raises(LabkitError, match=r"no results/attention_gpu\.json .*reinstall labkit"):
        paths.shipped_file("results", "attention_gpu.json")
    from labkit import bench

    with pytest.raises(LabkitError, match="decode_roofline.json"):
        bench.load_benchmark_results("decode_roofline")


def test_the_wheel_ships_every_file_of_labkit_and_datasets(wheel):
    """Each module and each data file (the committed GPU results included) is in the wheel, where the installed
    package looks for it: labkit/... as is, datasets/... as labkit/datasets/... ."""
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = []
    for f in _tracked("labkit", "datasets"):
        if f in NOT_SHIPPED:
            continue
        inside = "labkit/" + f if f.startswith("datasets/") else f
        if inside not in names:
            missing.append(f)
    assert missing == [], f"not in the wheel (pyproject.toml [tool.setuptools] packages / package-data): {missing}"
    assert any(n.startswith("labkit/datasets/results/") and n.endswith(".json") for n in names)


def test_every_labkit_subpackage_is_listed_for_the_wheel(wheel):
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "labkit").rglob("__init__.py")}
    names = zipfile.ZipFile(wheel).namelist()
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is a package but the wheel lacks it (pyproject packages)"


def test_an_installed_wheel_reads_its_shipped_data_from_any_folder(wheel, tmp_path):
    """Installed (not editable) and run from a folder of its own, with a package called `datasets` beside labkit in
    site-packages (Hugging Face's, on Colab): labkit finds its configs, catalog and the committed GPU results that
    notebooks 02, 05, 06 and 08 read."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "install", "--no-deps",
                    "--no-index", "--target", str(site), str(wheel)], check=True, capture_output=True)
    (site / "datasets").mkdir()
    (site / "datasets" / "__init__.py").write_text("# not labkit's\n")
    work = tmp_path / "notebooks"
    work.mkdir()
    code = f"""
import labkit, labkit.catalog as c
from labkit import attention, bench, cost, kvcache, paths
from labkit.models import list_configs
assert labkit.__file__.startswith({str(site)!r}), labkit.__file__
assert paths.datasets_dir() == paths.Path({str(site)!r}) / "labkit" / "datasets", paths.datasets_dir()
assert bench.committed_gpu_results() and bench.committed_llama_cpp_gpu_results()
assert cost.reference_gpu_result("Q4_K_M").decode_tokens_per_s > 0
assert attention.committed_runs() and kvcache.committed_gpu_results()
print(len(list_configs()), len(c.load_catalog()))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("LABKIT_DATASETS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    configs, entries = map(int, out.stdout.split())
    assert configs == len(list((ROOT / "datasets" / "configs").glob("*.json"))) - 1  # all but index.json
    import yaml

    assert entries == len(yaml.safe_load((ROOT / "datasets" / "catalog.yaml").read_text())["models"])


def test_labkit_reaches_shipped_data_only_through_paths():
    """A module that built its own path into the checkout (as bench did with benchmarks/results) would work in a
    checkout and fail when installed; every data path goes through labkit.paths."""
    offenders = []
    for module in sorted((ROOT / "labkit").rglob("*.py")):
        if module.name == "paths.py":
            continue
        for number, line in enumerate(module.read_text().splitlines(), 1):
            from_source = "__file__" in line and "parent.parent" in line  # the checkout, seen from a module
            if from_source or re.search(r"""/\s*["'](datasets|benchmarks)|(datasets|benchmarks)["']\s*/""", line):
                offenders.append(f"{module.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
