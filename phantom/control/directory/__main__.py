import sys

from phantom.cli.directory import main

sys.exit(main())
