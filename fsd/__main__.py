from fsd.cli import main

raise SystemExit(main())
