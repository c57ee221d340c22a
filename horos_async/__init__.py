"""horos-backup: export every CT/MR study of a Horos archive into one verified ZIP per study."""

__version__ = "0.1.0"

import logging as _logging

# Library convention: silent unless the CLI configures logging (cli.main prints errors itself).
_logging.getLogger("horos_async").addHandler(_logging.NullHandler())
