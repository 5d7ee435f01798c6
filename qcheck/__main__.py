from qcheck.cli.main import main

if __name__ == "__main__":  # not when a sweep's worker process (spawn) imports this module as __mp_main__
    raise SystemExit(main())
