import sys

from dib.cli import main

sys.exit(main())
