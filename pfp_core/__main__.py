import signal
import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: nothing started yet, so nothing to say
    sys.exit(130)

code = main()
# The work is done and written; a Ctrl-C now would only interrupt the interpreter's own exit handlers (with a
# KeyboardInterrupt traceback and exit code 0), so it is ignored for the last moments.
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.exit(code)
