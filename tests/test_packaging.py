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
    # Every kernel takes its flags from ctckit._core.config (cache=True); checked here on the
    # Viterbi kernel, which compiles in seconds (the loss kernels take about a minute cold).
    code = """
        import ctckit.numpy
        from ctckit._core.addresses import each_openmp as kernel  # a short call: on Numba's OpenMP layer
        ctckit.numpy.forced_align([[[0.0, -1.0]]] * 3, [[1]], [3], [1])
        print(sum(kernel.stats.cache_hits.values()), sum(kernel.stats.cache_misses.values()))
    """
    first = _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    second = _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert first.split() == ["0", "1"]
    assert second.split() == ["1", "0"]


def test_the_loss_compiles_each_round_when_first_needed_and_caches_it(tmp_path):
    # A batch runs its items through the one-scale passes first, and only what they leave
    # (long targets, or a rejected item) through the block-scaled passes, each round a
    # per-item kernel called through a pointer. A first call with short targets must not
    # compile the second round, and the first round must load from the disk cache next time.
    code = """
        import ctckit.numpy
        from ctckit._core.loss import items
        ctckit.numpy.ctc_loss_and_grad([[[0.0, -1.0, -2.0]]] * 6, [[1, 2]], [6], [2])
        kernels = (items._item_gradient_one_scale, items._item_gradient_blocks)
        print(*(f"{sum(k.stats.cache_hits.values())}/{sum(k.stats.cache_misses.values())}" for k in kernels))
    """
    first = _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    second = _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert first.split() == ["0/1", "0/0"]  # hits/misses: round one compiled, round two not
    assert second.split() == ["1/0", "0/0"]


def test_every_batch_kernel_caches_to_disk():
    from ctckit._core import addresses, align, beam, logits, logits_step
    from ctckit._core.loss import batch, posteriors

    kernels = [batch.loss_items, batch.gradient_items, posteriors._scatter_frames, align._viterbi_items, beam._beam_items,
               logits._gather_frames, logits._gradient_frames, logits_step.step_items, logits_step.loss_items, addresses.each_openmp,
               *batch._LOSS_ROUNDS, *batch._GRADIENT_ROUNDS]
    for kernel in kernels:
        assert type(kernel._cache).__name__ != "NullCache", kernel.py_func.__name__


def _internal_imports():
    """ctckit's modules and, for each, the ctckit modules it imports (at any depth of its
    code, lazy imports included), resolved to the module or package named."""
    import ast
    from pathlib import Path

    import ctckit

    root = Path(ctckit.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, parts[-1] == "__init__")
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in modules:
                        edges.add(target)
                    elif base in modules:
                        edges.add(base)
        edges.discard(name)
        graph[name] = edges
    return modules, graph


def test_no_module_of_ctckit_imports_itself_through_others():
    modules, graph = _internal_imports()
    assert "ctckit._core.loss.batch" in graph["ctckit._core.loss"]  # the resolution works
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_core_imports_no_frontend_and_no_framework():
    modules, graph = _internal_imports()
    for module, targets in graph.items():
        if module.startswith("ctckit._core"):
            leaves = {"ctckit._threads", "ctckit._compile_notice"}  # NumPy or Numba alone
            outside = {t for t in targets if not t.startswith("ctckit._core")} - leaves
            assert not outside, (module, outside)


def test_every_source_file_stays_readable_in_one_sitting():
    modules, _ = _internal_imports()
    sizes = {name: len(path.read_text().splitlines()) for name, (path, _) in modules.items()}
    assert max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda item: -item[1])[:3]
