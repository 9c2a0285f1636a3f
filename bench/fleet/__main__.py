"""``python -m bench.fleet``: see `bench.fleet` and `bench.fleet.run`."""

import sys

from bench.fleet.run import main

sys.exit(main())
