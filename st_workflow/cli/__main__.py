import sys

from st_workflow.cli import main

sys.exit(main())
