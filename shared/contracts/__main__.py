import sys

from shared.contracts.export import main

raise SystemExit(main(sys.argv[1:]))
