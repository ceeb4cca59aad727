"""The ``ctckit`` command line: options checked by argparse, plain help, a one-line message
without torch, the benchmark's report of skipped providers, and the README's set-up commands."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ctckit import bench, bench_step
from ctckit.__main__ import main

ROOT = Path(__file__).resolve().parent.parent

# Appended after the option under test: argparse stops at the first bad option, so these never
# speak when the option under test is checked, and a missing check fails the test at once
# instead of starting a benchmark or a training.
STOP = {"bench": ["--shapes", "nope"], "demo": ["--steps", "0"], "example": ["--nope"]}


@pytest.mark.parametrize("command, option, value", [
    ("bench", "--threads", "0"), ("bench", "--threads", "two"), ("bench", "--repeats", "0"),
    ("bench", "--repeats", "-3"), ("demo", "--steps", "0"), ("demo", "--batch", "0"), ("demo", "--val", "0"),
    ("demo", "--threads", "0"), ("demo", "--seed", "-1"), ("demo", "--seed", str(2**64)), ("example", "--seed", "-1"),
])
def test_numeric_options_are_range_checked_by_argparse(capsys, command, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main([command, option, value, *STOP[command]])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"ctckit {command}: error: argument {option}: must be an integer" in error
    assert "Traceback" not in error


def test_the_repeats_minimum_in_the_help_is_the_one_enforced(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    minimum = int(re.search(r"--repeats REPEATS [^-]*at least (\d+)", help_text).group(1))
    with pytest.raises(SystemExit):
        main(["bench", "--repeats", str(minimum - 1), *STOP["bench"]])
    assert f"argument --repeats: must be an integer >= {minimum}, got {minimum - 1}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--repeats", str(minimum), *STOP["bench"]])
    error = capsys.readouterr().err
    assert "--repeats" not in error.splitlines()[-1] and "--shapes: unknown nope" in error


def test_bench_rejects_unknown_shapes_and_providers(capsys):
    for argv, message in ((["--shapes", "docs,nope"], "--shapes: unknown nope; choose from docs"),
                          (["--providers", "torch"], "--providers must include ctckit")):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["example"], ["demo"], ["bench"]])
def test_help_is_plain_text(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "usage: ctckit" in help_text
    assert "``" not in help_text and not re.search(r":[a-z]+:`", help_text), help_text


@pytest.mark.parametrize("argv, extra", [
    (["example"], "torch"),
    (["demo", "--steps", "1", "--no-progress"], "demo"),
    (["bench", "--shapes", "docs", "--no-memory", "--no-extras"], "torch,bench"),
])
def test_without_torch_each_command_says_what_to_install(tmp_path, argv, extra):
    code = f"""
        import sys
        sys.modules["torch"] = None  # what Python does for a package that is not installed
        from ctckit.__main__ import main
        sys.exit(main({argv!r}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"ctckit {argv[0]} needs torch: pip install -e '.[{extra}]' "
                                     f"in a clone of ctckit"), result.stderr


def test_bench_leaves_skipped_providers_out_of_the_plot_and_the_tables(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    def not_installed(problem):
        raise ModuleNotFoundError("No module named 'jax'", name="jax")

    measured, legends = [], []
    save = matplotlib.figure.Figure.savefig

    def record_legend(figure, *args, **kwargs):
        legends.append([text.get_text() for text in figure.axes[0].get_legend().get_texts()])
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(bench, "provider_optax", not_installed)
    monkeypatch.setitem(bench_step._LOADERS, "optax", lambda logits, problem: not_installed(problem))
    for name in ("ctckit.jax", "ctckit.jax fwd", "optax fwd"):
        monkeypatch.setitem(bench_step._LOADERS, name, lambda logits, problem: not_installed(problem))
    monkeypatch.setattr(bench, "MEMORY_SHAPES", ("docs",))
    monkeypatch.setattr(bench, "peak_memory", lambda provider, shape: measured.append(provider) or 2**20)
    monkeypatch.setattr(bench, "run_step_memory", lambda shapes, providers: {s: {p: 3 * 2**20 for p in providers}
                                                                             for s in shapes})
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record_legend)
    assert bench.main(["--shapes", "docs", "--providers", "ctckit,torch,optax", "--repeats", "5", "--threads", "1",
                       "--no-extras", "--out", str(tmp_path)]) == 0

    assert legends == [["ctckit", "torch"]]
    assert measured == ["ctckit", "torch"]
    report = json.loads((tmp_path / "results.json").read_text())
    assert set(report["memory"]["docs"]) == {"ctckit", "torch"}
    assert report["speed"][0]["skipped"] == {"optax": "not installed (jax)"}
    table = (tmp_path / "results.md").read_text()
    assert "optax peak MiB" not in table and "| ctckit peak MiB | torch peak MiB |" in table
    assert "Skipped: optax, not installed (jax)." in table
    output = capsys.readouterr().out
    assert "skipped: optax (not installed (jax))" in output
    step = report["training_step"]["rows"][0]
    assert set(step["ms"]) == {"ctckit fused", "ctckit+log_softmax", "torch"} and step["fastest_peer"] == "torch"
    assert step["skipped"] == {name: "not installed (jax)" for name in ("ctckit.jax", "optax", "ctckit.jax fwd", "optax fwd")}
    assert 0 < step["floor_ms"] < step["ms"]["ctckit fused"]
    assert ("| shape | ctckit fused | ctckit+log_softmax | torch | floor | fastest peer / fused | optax / ctckit.jax: step, "
            "forward |") in table
    assert "| docs | 3 | 3 | 3 |" in table  # the step's peak memory, MiB


def _readme_set_up():
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]


def test_readme_set_up_installs_from_the_clone():
    # ctckit is not on the package index: every install of it is from the clone or a wheel built there.
    set_up = _readme_set_up()
    installs = re.findall(r"pip install ([^`\n&]+)", set_up)
    assert installs
    for install in installs:
        project = [word.strip("'\"") for word in install.split() if "ctckit" in word or word.strip("'\"").startswith(".")]
        assert project, install
        assert all(word.startswith((".", "dist/")) for word in project), install


def test_readme_set_up_commands_are_the_demo_and_what_ci_runs():
    blocks = re.findall(r"```bash\n(.*?)\n```", _readme_set_up(), re.S)
    assert len(blocks) == 2
    demo, tests = blocks
    assert demo.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[demo]'")
    assert demo.endswith("&& ctckit demo")
    ci = (ROOT / ".ci" / "run").read_text()
    install, run = tests.split(" && ")
    assert install.replace("pip install ", "pip install --quiet ") in ci.splitlines()
    assert run in ci.splitlines()


def test_warmup_help_says_what_it_compiles_and_its_options_are_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["warmup", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.startswith("usage: ctckit warmup [-h] [--jobs JOBS] [--quiet]")
    assert "Numba's on-disk cache" in help_text and "``" not in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["warmup", "--jobs", "0"])
    assert exit_info.value.code == 2
    assert "argument --jobs: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_fast_shapes_get_more_interleaved_runs_within_the_budget():
    import time

    from ctckit._bench_common import MAX_ROUNDS, interleaved_medians

    calls = []
    fast = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 5, budget=1.0)
    assert fast.rounds == MAX_ROUNDS and calls.count("a") == calls.count("b") == MAX_ROUNDS + 2  # warmup, estimate
    slow = interleaved_medians({"a": lambda: time.sleep(0.02)}, 5, budget=0.05)
    assert slow.rounds == 5  # never fewer than asked
    assert interleaved_medians({"a": lambda: None}, 7).rounds == 7  # no budget: as asked
