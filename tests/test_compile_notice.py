"""The notice that a kernel is compiling: given once, while the compilation runs, on stderr,
never for a load from Numba's cache, and silenced by an environment variable or a filter."""

import os
import subprocess
import sys
import textwrap
import time
import types
import warnings

import numpy as np
import pytest

NOTICE = "CompileWarning: ctckit is compiling"

# A first call on the smallest input; "returned" is printed once it returns, to the same
# stream as the notice (stderr), which must come first: it is given while compiling.
FIRST_CALL = """
    import sys
    import numpy as np
    import ctckit.numpy as cn
    cn.ctc_loss(np.log(np.full((5, 1, 4), 0.25)), [[1, 2]], [5], [2])
    print("returned", file=sys.stderr, flush=True)
"""


def _first_call(tmp_path, cache, **env):
    script = tmp_path / "first_call.py"
    script.write_text(textwrap.dedent(FIRST_CALL))
    environment = {key: value for key, value in os.environ.items() if key not in ("CTCKIT_QUIET_COMPILE", "PYTHONWARNINGS")}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                            env={**environment, "NUMBA_CACHE_DIR": str(cache), **env})
    return script, result.stderr


@pytest.fixture(scope="module")
def cold_and_warm(tmp_path_factory):
    """A first call in an empty cache, then one more in the cache it filled."""
    tmp_path = tmp_path_factory.mktemp("notice")
    cache = tmp_path / "cache"
    cache.mkdir()
    script, cold = _first_call(tmp_path, cache)
    _, warm = _first_call(tmp_path, cache)
    return script, cache, cold, warm


def test_a_first_call_says_once_while_compiling_what_compiles_and_where_it_is_cached(cold_and_warm):
    script, cache, cold, _ = cold_and_warm
    assert cold.count(NOTICE) == 1, cold
    notice = next(line for line in cold.splitlines() if NOTICE in line)
    assert notice.startswith(f"{script}:5: "), notice  # the caller's line, as warnings.warn would say
    assert cold.index(NOTICE) < cold.index("returned")  # given while the main thread compiled
    assert f"{cache} (NUMBA_CACHE_DIR)" in notice
    assert "ctckit._core." in notice and "10-20 s" in notice
    assert "ctckit warmup" in notice and "CTCKIT_QUIET_COMPILE=1" in notice and "category=ctckit.CompileWarning" in notice


def test_a_load_from_the_cache_says_nothing(cold_and_warm):
    _, _, _, warm = cold_and_warm
    assert NOTICE not in warm and "returned" in warm


def test_the_environment_variable_silences_it(tmp_path):
    _, stderr = _first_call(tmp_path, tmp_path, CTCKIT_QUIET_COMPILE="1")
    assert "CompileWarning" not in stderr and "returned" in stderr


def test_a_command_line_filter_by_message_silences_it():
    # -W and PYTHONWARNINGS resolve a category before a virtual environment's packages are
    # importable: the documented command-line filter is by the message's start.
    code = "import warnings, ctckit; warnings.warn('ctckit is compiling k', ctckit.CompileWarning); print('ok')"
    result = subprocess.run([sys.executable, "-W", "ignore:ctckit is compiling", "-c", code], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "ok" and result.stderr == ""


def test_import_ctckit_does_not_import_numba():
    out = subprocess.run([sys.executable, "-c", "import sys, ctckit; print('numba' in sys.modules)"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


# The listener's logic on simulated compilations (a short delay instead of a real compiler).

def _kernel(module="ctckit._core.fake", name="kernel"):
    function = types.FunctionType(compile("pass", "<fake>", "exec"), {}, name)
    function.__module__, function.__qualname__ = module, name
    return types.SimpleNamespace(py_func=function)


@pytest.fixture
def notice(monkeypatch):
    from ctckit import _compile_notice

    monkeypatch.setattr(_compile_notice, "_given", False)
    monkeypatch.setattr(_compile_notice, "DELAY", 0.05)
    monkeypatch.delenv("CTCKIT_QUIET_COMPILE", raising=False)
    return _compile_notice


def _compile(notice, dispatcher, seconds, nested=None):
    notice._started(dispatcher)
    if nested is not None:
        _compile(notice, nested, seconds)
    time.sleep(seconds)
    notice._ended()


def test_only_slow_top_level_compilations_of_ctckit_kernels_are_noticed_and_only_once(notice):
    from ctckit import CompileWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compile(notice, _kernel(), 0.0)                       # ends before the delay
        _compile(notice, _kernel("numpy.fake"), 0.3)          # not ctckit's
        _compile(notice, _kernel("numpy.fake"), 0.0, nested=_kernel())  # ctckit's, inside another's compilation
        time.sleep(0.2)
        assert not caught
        _compile(notice, _kernel(name="slow"), 0.3)
        _compile(notice, _kernel(name="slower"), 0.3)
        time.sleep(0.1)
    assert [w.category for w in caught] == [CompileWarning]
    assert "ctckit._core.fake.slow " in str(caught[0].message)


def test_a_warnings_filter_silences_it(notice):
    from ctckit import CompileWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=CompileWarning)
        _compile(notice, _kernel(), 0.3)
    assert not caught


def test_an_error_filter_prints_it_instead_of_raising_it_on_the_timer_thread(notice, capsys):
    from ctckit import CompileWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=CompileWarning)
        _compile(notice, _kernel(), 0.3)
    assert NOTICE in capsys.readouterr().err


def test_compiling_half_float_logits_batch_first_raises_no_numba_warning(tmp_path):
    """A user running with ``-W error`` (or pytest's ``filterwarnings = error``) compiles
    every kernel under it: Numba's own warnings must not fire there. The gradient on float16
    logits given batch first once made Numba's SSA pass warn ("please report"), an error
    under ``-W error``."""
    script = tmp_path / "half.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import ctckit.numpy as cn
        rng = np.random.default_rng(0)
        logits = rng.standard_normal((2, 30, 6)).astype(np.float16).transpose(1, 0, 2)
        loss, grad = cn.ctc_loss_and_grad_from_logits(logits, [[1, 2, 2], [3, 4, 5]], [30, 27], [3, 3])
        assert np.isfinite(loss) and np.isfinite(grad).all()
        print("ok")
    """))
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    result = subprocess.run([sys.executable, "-W", "error", str(script)], capture_output=True, text=True,
                            env={**environment, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "CTCKIT_QUIET_COMPILE": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    assert "Warning" not in result.stderr, result.stderr[-3000:]


def test_without_a_writable_cache_folder_the_kernels_compile_in_memory_and_say_so(tmp_path):
    """A read-only installation with a read-only home (no folder Numba looks in is
    writable) made ``cache=True`` raise at decoration: ``import ctckit.numpy`` failed with
    "cannot cache function 'each_openmp': no locator available". Numba's locators are
    emptied here, which is what it finds then."""
    script = tmp_path / "no_cache.py"
    script.write_text(textwrap.dedent("""
        import sys
        from numba.core import caching
        caching.CacheImpl._locator_classes = []  # no folder to cache in
        import numpy as np
        import ctckit.numpy as cn
        import ctckit.warmup
        from ctckit._core import disk_cache
        assert len(disk_cache.UNCACHED) > 40, disk_cache.UNCACHED
        print(repr(float(cn.ctc_loss(np.log(np.full((5, 1, 4), 0.25)), [[1, 2]], [5], [2], reduction="sum"))))
        print("returned", file=sys.stderr, flush=True)
        try:
            ctckit.warmup.run(quiet=True, jobs=1)
        except SystemExit as stop:
            print(stop.code, flush=True)
    """))
    environment = {key: value for key, value in os.environ.items() if key not in ("CTCKIT_QUIET_COMPILE", "PYTHONWARNINGS")}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    loss, refusal = result.stdout.strip().splitlines()
    # 35 paths of 5 frames collapse to "1 2" (blanks, 1s, blanks, 2s, blanks: C(7, 4)), each 0.25^5
    expected = -np.log(35 * 0.25 ** 5)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert result.stderr.count(NOTICE) == 1 and "Numba cannot cache the machine code" in result.stderr
    assert refusal.startswith("ctckit warmup: Numba cannot cache the machine code") and "NUMBA_CACHE_DIR" in refusal
