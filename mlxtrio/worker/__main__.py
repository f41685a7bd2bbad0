import os
import sys

from ._main import main

code = main(sys.argv[1:])
# Its work is done (the channel is closed): tearing down MLX's and transformers' modules
# would only keep the orchestrator, and a restart, waiting for this exit.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
