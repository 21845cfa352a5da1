import sys

from modelserver.app import main

sys.exit(main(sys.argv[1:]))
