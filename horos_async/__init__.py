"""horos-backup: export every CT/MR study of a Horos archive into one verified ZIP per study."""

__version__ = "0.1.0"
