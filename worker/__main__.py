"""`python -m worker` is `compliance-worker`."""

import sys

from worker.cli import main

sys.exit(main())
