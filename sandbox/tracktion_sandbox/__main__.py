import sys

from tracktion_sandbox.cli import main

sys.exit(main())
