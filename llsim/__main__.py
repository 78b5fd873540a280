import sys

from llsim.cli.main import main

sys.exit(main())
