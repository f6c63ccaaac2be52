"""`python -m ddpmrt.export ...` is the `ddpmrt` command (and what `torchrun -m` starts)."""

import sys

from ddpmrt.export.cli import main

sys.exit(main())
