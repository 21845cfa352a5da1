from autoscaler.app import main

raise SystemExit(main())
