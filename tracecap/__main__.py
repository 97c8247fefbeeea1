from tracecap.cli import main
raise SystemExit(main())
