from qcheck.cli.main import main

raise SystemExit(main())
