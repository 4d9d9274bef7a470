"""``python -m kqd`` is the ``kqd`` command."""

import sys

from kqd.cli import main

sys.exit(main())
