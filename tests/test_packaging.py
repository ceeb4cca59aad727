"""What gets installed: import isolation, typing marker, Numba's on-disk cache."""

import importlib.resources
import os
import subprocess
import sys
import textwrap


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True).stdout


def test_core_and_numpy_frontend_do_not_import_torch():
    out = _run("""
        import sys, ctckit, ctckit.numpy
        ctckit.numpy.ctc_loss([[0.0, -1.0]] * 3, [1], 3, 1)
        print('torch' in sys.modules)
    """)
    assert out.strip() == "False"


def test_py_typed_is_shipped():
    assert importlib.resources.files("ctckit").joinpath("py.typed").is_file()


def test_kernels_are_cached_on_disk(tmp_path):
    code = """
        import ctckit.numpy
        from ctckit._core.loss import ctc_loss_batch
        ctckit.numpy.ctc_loss_and_grad([[0.0, -1.0]] * 3, [1], 3, 1)
        print(sum(ctc_loss_batch.stats.cache_hits.values()), sum(ctc_loss_batch.stats.cache_misses.values()))
    """
    first = _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    second = _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert first.split() == ["0", "1"]
    assert second.split() == ["1", "0"]


def test_bench_rejects_unknown_shapes_and_providers(capsys):
    import pytest

    from ctckit.bench import main

    for argv, message in ((["--shapes", "docs,nope"], "--shapes: unknown nope; choose from docs"),
                          (["--providers", "torch"], "--providers must include ctckit")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
