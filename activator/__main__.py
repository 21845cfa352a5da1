from activator.app import main

raise SystemExit(main())
