import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: nothing started yet, so nothing to say
    sys.exit(130)

sys.exit(main())
