"""`python -m sandboxer.cli`: the same as the `sandboxer` command."""

import sys

from . import main

sys.exit(main())
