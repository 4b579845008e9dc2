#!/usr/bin/env python
"""Reproduce every table and figure of theorybench: ``python run_all.py [--preset default]``.

Thin entry point: options are parsed and wired in ``theorybench.cli``.
"""

import sys

from theorybench.cli import main

if __name__ == "__main__":
    sys.exit(main())
