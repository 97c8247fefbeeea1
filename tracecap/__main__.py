from tracecap.cli import run
raise SystemExit(run())
