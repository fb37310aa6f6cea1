from multitask_serve.cli import main

raise SystemExit(main())
