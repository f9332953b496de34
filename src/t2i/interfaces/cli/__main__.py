"""`python -m t2i.interfaces.cli ...` (and `accelerate launch -m t2i.interfaces.cli ...`)."""
import sys

from t2i.interfaces.cli import program

sys.exit(program())
