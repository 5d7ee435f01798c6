from qcheck.cli import main

raise SystemExit(main())
