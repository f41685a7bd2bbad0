"""ssh to a host of a worker group's test, without a network: ``python fake_ssh.py HOST COMMAND`` runs COMMAND here, as ssh runs it there."""

import os
import sys

host, command = sys.argv[1:]
os.environ["FAKE_SSH_HOST"] = host
os.execvp("sh", ["sh", "-c", command])
