"""`python -m dgate.gpu_check`."""

import sys

from dgate.gpu_check import main

sys.exit(main())
