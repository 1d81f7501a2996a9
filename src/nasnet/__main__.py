from nasnet.cli import main
import sys

sys.exit(main())
