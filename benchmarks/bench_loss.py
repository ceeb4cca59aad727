"""Speed and memory of the CTC loss, ctckit against its peers: see ``ctckit/bench.py``.

Run: ``python benchmarks/bench_loss.py [--out bench-out]`` (the same as ``ctckit bench``).
"""

import sys

from ctckit.bench import main

if __name__ == "__main__":
    sys.exit(main())
