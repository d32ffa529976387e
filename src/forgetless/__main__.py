"""`python -m forgetless ...` (and `accelerate launch -m forgetless ...`): the same as the `forgetless` command."""

import sys

from .cli import main

sys.exit(main())
