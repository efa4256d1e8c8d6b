from osscar.cli import main

raise SystemExit(main())
