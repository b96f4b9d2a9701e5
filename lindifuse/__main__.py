import sys

from lindifuse.cli import main

sys.exit(main())
