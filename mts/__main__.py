from mts.cli import main

raise SystemExit(main())
