import sys

try:  # Ctrl-C while torch and friends import is a stop, not a traceback
    from trainer.cli import main
except KeyboardInterrupt:
    print("\nstopped.", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
