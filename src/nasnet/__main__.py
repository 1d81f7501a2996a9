import sys

from nasnet.cli import main

sys.exit(main())
