"""The efficiency figures of benchmarks/RESULTS.md, each next to its transformers baseline, from one run.

    python benchmarks/bench.py [--quick] --out DIR      (the same as: rnope bench [--quick] --out DIR)

The measurements live in the package (:mod:`rnope.bench`), so ``rnope bench`` works from an
installed wheel; this script only calls them.
"""

import sys

from rnope.bench import main

if __name__ == "__main__":
    sys.exit(main())
