# Launcher of the zoo-locked runner. The installer (the runner role, or `make venv` in a checkout) writes it
# as BIN/zoo-locked with the virtualenv's interpreter as its first line; the code lives beside it in
# ../lib/zoo-locked/zoo_locked, a copy of (or, in a checkout, a link to) the collection's plugins/module_utils.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "lib", "zoo-locked"))

from zoo_locked._runner import cli  # noqa: E402

cli()
