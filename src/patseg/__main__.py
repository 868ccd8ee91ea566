import sys

from patseg.cli import main

sys.exit(main())
