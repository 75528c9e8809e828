from fsd._cli import main

raise SystemExit(main())
