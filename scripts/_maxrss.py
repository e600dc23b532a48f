#!/usr/bin/env python
"""Run a command and print its peak resident memory (KiB, all its descendants) as the last line: `maxrss_kib N`."""
import resource
import subprocess
import sys

rc = subprocess.call(sys.argv[1:])
print(f"maxrss_kib {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", flush=True)
sys.exit(rc)
