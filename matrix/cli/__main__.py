"""``python -m matrix.cli``: the same as the ``dib-matrix`` command."""

import sys

from matrix.cli import main

sys.exit(main())
