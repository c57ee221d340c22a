"""The demo Horos library: real DICOM files and a real ``Database.sql`` shaped like Horos's.

The same shipped code is the test suite's fixture library (``build_demo``, ``copy_library``), the demo
command's library, and the benchmarks' large store (``build_large_database``, in ``bigstore``).
``schema`` holds the tables and encodings, ``cases`` what the library holds, ``dicom`` the files.
"""

from horos_async.demo.bigstore import build_large_database
from horos_async.demo.library import DemoLibrary, DemoStudy, add_images, add_study, build_demo, copy_library
from horos_async.demo.schema import (DUE_MODALITIES, REFERENCE_UNIX, core_data_time, horos_patient_uid,
                                     horos_study_modality)

__all__ = ["DUE_MODALITIES", "REFERENCE_UNIX", "DemoLibrary", "DemoStudy", "add_images", "add_study", "build_demo",
           "build_large_database", "copy_library", "core_data_time", "horos_patient_uid", "horos_study_modality"]
