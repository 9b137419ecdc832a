import sys

from mrm.cli import main

sys.exit(main())
