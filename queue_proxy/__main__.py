import sys

from queue_proxy.app import main

sys.exit(main(sys.argv[1:]))
