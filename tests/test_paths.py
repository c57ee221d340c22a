"""File resolution exactly as Horos does it (docs/design/horos-database.md §4.2 worked example)."""

from __future__ import annotations

from pathlib import Path

import pytest

from horos_async.horos_db import ImageRef, bucket_folder, resolve_image_path

ROOT = Path("/data/Horos Data")


def img(number=None, string=None):
    return ImageRef(series_pk=1, series_number=1, series_description="", modality="CT", instance_number=1,
                    path_number=number, path_string=string)


@pytest.mark.parametrize("number, string, expected", [
    (12345, None, "DATABASE.noindex/20000/12345.dcm"),
    (9999, None, "DATABASE.noindex/10000/9999.dcm"),
    (10000, None, "DATABASE.noindex/20000/10000.dcm"),
    (0, None, "DATABASE.noindex/10000/0.dcm"),
    (None, "150432.tif", "DATABASE.noindex/160000/150432.tif"),
    (None, "20001.dcm", "DATABASE.noindex/30000/20001.dcm"),
])
def test_worked_example(number, string, expected):
    path, linked = resolve_image_path(img(number, string), ROOT, 10000)
    assert path == ROOT / expected and linked is False


def test_linked_absolute_path_is_used_as_is_and_mapped():
    path, linked = resolve_image_path(img(None, "/Volumes/CD/DICOM/IM0001"), ROOT, 10000)
    assert path == Path("/Volumes/CD/DICOM/IM0001") and linked
    mapped, _ = resolve_image_path(img(None, "/Volumes/CD/DICOM/IM0001"), ROOT, 10000,
                                   (("/Volumes/CD/DICOM", "/mnt/dicom"), ("/Volumes/CD", "/mnt/cd")))
    assert mapped == Path("/mnt/dicom/IM0001")
    # a prefix only matches whole path components
    other, _ = resolve_image_path(img(None, "/Volumes/CDROM/x"), ROOT, 10000, (("/Volumes/CD", "/mnt/cd"),))
    assert other == Path("/Volumes/CDROM/x")


def test_folder_size_is_configurable_and_empty_rows_name_nothing():
    assert bucket_folder(250, 100) == 300
    path, _ = resolve_image_path(img(250), ROOT, 100)
    assert path == ROOT / "DATABASE.noindex/300/250.dcm"
    assert resolve_image_path(img(None, None), ROOT, 10000) == (None, False)
    assert resolve_image_path(img(None, "  "), ROOT, 10000) == (None, False)


def test_path_number_wins_over_any_path_string():
    # docs/design/horos-database.md §0/§4.2: a ZPATHNUMBER turns into "<n>.dcm" first, whatever ZPATHSTRING holds
    path, linked = resolve_image_path(img(12345, "/Volumes/CD/IM1"), ROOT, 10000)
    assert path == ROOT / "DATABASE.noindex/20000/12345.dcm" and not linked


def test_absolute_path_is_not_normalised_or_trimmed():
    # ".." may cross a symlink, and a trailing space is part of a file name: the kernel decides
    path, _ = resolve_image_path(img(None, "/Volumes/CD/lnk/../DICOM/IM0001 "), ROOT, 10000)
    assert str(path) == "/Volumes/CD/lnk/../DICOM/IM0001 "


def test_relative_name_with_a_folder_keeps_it_and_takes_n_from_its_start():
    path, _ = resolve_image_path(img(None, "sub/150432.tif"), ROOT, 10000)
    assert path == ROOT / "DATABASE.noindex/10000/sub/150432.tif"
