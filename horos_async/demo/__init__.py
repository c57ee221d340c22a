"""The demo Horos library: real DICOM files and a real ``Database.sql`` shaped like Horos's.

The same shipped code is the test suite's fixture library (``build_demo``), the demo command's library,
and the benchmarks' large store (``build_large_database``).
"""

from horos_async.demo.library import (  # noqa: F401 (the package's public face)
    DUE_MODALITIES, REFERENCE_UNIX, DemoLibrary, DemoStudy, add_images, add_study, build_demo,
    build_large_database, core_data_time, horos_patient_uid, horos_study_modality)
