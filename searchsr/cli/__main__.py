"""``python -m searchsr.cli``: the same as the ``searchsr`` command."""

import sys

from searchsr.cli import main

sys.exit(main())
