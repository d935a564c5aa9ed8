import sys

from vild.cli import main

sys.exit(main())
