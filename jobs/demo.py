"""The end-to-end demo (= `pipeline demo`, what `make demo` runs; same flags and exit codes).

.venv/bin/python jobs/demo.py --epochs 20 --json
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
