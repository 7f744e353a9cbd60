"""The README stays a short, true reference: size, headline, entry points, layout, links.

Every entry point it lists answers --help in a subprocess of this interpreter, as a user would run it.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "firmware" / "README.md",
        *sorted((ROOT / "firmware" / "ports").glob("*/README.md"))]


def _section(title: str) -> str:
    """The README's text under `## title`, up to the next section."""
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_is_short_and_opens_with_the_published_models():
    assert len(README) <= 15_000
    # The first screen's table quotes each published CIFAR-10 model's manifest figures.
    manifest = {m["name"]: m for m in json.loads((ROOT / "models" / "manifest.json").read_text())["models"]}
    first_screen = README.splitlines()[:40]
    rows = [line.split(" | ") for line in first_screen if line.startswith("| `cifar10-")]
    assert len(rows) >= 3
    for cells in rows:
        entry = manifest[cells[0].strip("| `")]
        assert cells[2] == f"{entry['test_acc_deploy_int8']:.2%}".replace("%", " %")
        assert cells[4].startswith(f"{entry['mac_ratio_deploy']:.3f}")
        assert cells[5] == str(entry.get("distinct_paths", 1))
        if entry.get("distinct_paths", 1) > 1:
            assert cells[4].endswith(f"({entry['mac_ratio_std']:.3f})")


def test_readme_set_up_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().replace(" -q -e", " -e")  # CI installs quietly
    for command in ("python3.11 -m venv .venv", ".venv/bin/pip install -e '.[dev]'", ".venv/bin/python -m pytest -q"):
        assert command in _section("Set up") and command in ci


def _listed_entry_points() -> tuple[list[str], list[str]]:
    """(console scripts, `python -m` modules) in the README's entry-point table."""
    table = _section("Entry points")
    return re.findall(r"^\| `(cg-[a-z]+)` \|", table, re.M), re.findall(r"`python -m (cosinegate\.[a-z0-9_.]+)`", table)


def test_readme_lists_every_entry_point():
    import tomllib
    scripts, modules = _listed_entry_points()
    assert set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]) <= set(scripts)
    # Every module with a command line, except the arena-sizing helper process export.tflm starts
    # and the modules behind the console scripts.
    tools = {f"cosinegate.{path.parent.name}.{path.stem}"
             for package in ("train", "export", "bench", "experiments")
             for path in (ROOT / package).glob("*.py")
             if 'if __name__ == "__main__"' in path.read_text() and path.stem not in ("tflm", "cli", "demo")}
    assert tools <= set(modules)


# Runs each entry point as its command line would (the installed script's file, or `python -m`),
# all in one interpreter so torch is imported once; prints {entry: [exit code, stdout]}.
_RUN_HELP = """
import contextlib, io, json, runpy, sys
results = {}
for kind, entry in json.loads(sys.argv[1]):
    sys.argv = [entry, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            if kind == "script":
                runpy.run_path(entry, run_name="__main__")
            else:
                runpy.run_module(entry, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    results[entry] = [code, out.getvalue()]
print(json.dumps(results))
"""


def test_listed_entry_points_answer_help():
    scripts, modules = _listed_entry_points()
    bin_dir = Path(sys.executable).parent
    entries = [("script", str(bin_dir / s)) for s in scripts] + [("module", m) for m in modules]
    done = subprocess.run([sys.executable, "-c", _RUN_HELP, json.dumps(entries)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert len(results) == len(entries)
    for entry, (code, out) in results.items():
        assert code == 0 and out.startswith("usage:"), (entry, code, out[:200])


def test_layout_table_names_the_top_level_folders():
    listed = set(re.findall(r"^\| `([^`/]+)/` \|", _section("Layout"), re.M))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/", 1)[0] for line in tracked.splitlines()
               if "/" in line and not line.startswith(".")}
    assert listed == folders


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page):
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    targets = [(page.parent / link.split("#", 1)[0]).resolve() for link in links
               if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    missing = [t for t in targets if not t.exists()]
    assert not missing, missing


def test_firmware_readme_gives_each_qemu_core_its_tflm_arch_and_flags():
    """The per-core build table in firmware/README.md is what cosinegate.bench.qemu.CORES builds."""
    from cosinegate.bench import qemu
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| `([\w-]+)` \| `([\w+-]+)` \| `([^`]+)` \|$",
                      (ROOT / "firmware" / "README.md").read_text(), re.M)
    assert {core: (machine, arch, flags) for core, machine, arch, flags in rows} == {
        core: (spec.machine, spec.tflm_target_arch, spec.cpu_flags) for core, spec in qemu.CORES.items()}
