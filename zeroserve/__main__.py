from zeroserve.cli import main

raise SystemExit(main())
