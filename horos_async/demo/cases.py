"""What the demo library holds: the special studies that exercise awkward cases, and ordinary ones.

Each spec says how to make one study (series, dates, names, where its files go); ``library`` writes them.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import List, Optional

from horos_async.demo import dicom as dd

@dataclass
class SeriesSpec:
    """How to make one series (internal)."""

    modality: str
    images: int = 3
    number: int = 1
    description: str = ""
    rle: bool = False
    frames: int = 1  # > 1: each file is multi-frame with this many frames
    where: str = "db"  # db | relative | linked | rois
    offset: float = 0.0  # seconds from the study start to the series' first image


@dataclass
class StudySpec:
    """How to make one study (internal)."""

    note: str
    name: str
    series: List[SeriesSpec]
    start: Optional[dt.datetime]  # local wall-clock acquisition start; None = no dates in the files
    birth: Optional[dt.date] = None
    patient_id: str = ""
    sex: str = "O"
    date_only: bool = False  # the files carry StudyDate only (Horos then files them at 12:00 local)
    added_ago: float = 86400.0 * 30  # seconds before `now` the study was imported
    missing: str = ""  # "" | "one" | "all"
    uid: Optional[str] = None
    description: str = "Demo study"



FIRST_NAMES = ("Ana", "Bruno", "Carla", "Diego", "Elisa", "Fábio", "Gabriela", "Heitor", "Iara", "João", "Larissa",
          "Marcos", "Natália", "Otávio", "Paula", "Rafael", "Sofia", "Thiago", "Vitória", "Yuri")
LAST_NAMES = ("Silva", "Souza", "Oliveira", "Santos", "Pereira", "Lima", "Carvalho", "Ferreira", "Rodrigues",
         "Almeida", "Gonçalves", "Ribeiro", "Martins", "Barbosa")


def special_specs(seed: int, rle: bool) -> List[StudySpec]:
    """The fixed awkward cases, one note each (sample-ct and sample-mr are added by the builder)."""
    ct, mr, at, d = "CT", "MR", dt.datetime, dt.date
    long_name = ("Maria Eduarda Albuquerque Cavalcanti de Vasconcelos Bragança " * 2)[:119] + "^" \
        + ("Wolfeschlegelsteinhausenbergerdorff Pinheiro Guimarães " * 2)[:80]
    dup_uid = dd.make_uid(seed, "duplicate-uid")
    S = SeriesSpec
    specs = [
        StudySpec("accented", "José^Conceição", [S(ct, description="Abdômen"),
                                              S(ct, number=2, description="Abdômen RLE", rle=rle, offset=300)],
               at(2024, 1, 15, 9, 12, 30), d(1975, 8, 2), "P-ACC-001", "M", description="Abdômen"),
        StudySpec("hostile", '../../etc/passwd^<script>:*?|"\x07', [S(mr, description="Brain/../T1")],
               at(2024, 2, 3, 14, 5), d(1990, 1, 1), "../P:02"),
        StudySpec("emoji", "Ünïcödé 🙂^Test", [S(ct, description="Chest 🙂")], at(2024, 2, 20, 8), d(2001, 12, 24),
               "P-EMO-003", "F"),
        StudySpec("empty-name", "", [S(ct)], at(2024, 3, 5, 10), d(1960, 6, 6), "P-EMP-004"),
        StudySpec("long-name", long_name, [S(mr, description="Knee")], at(2024, 3, 12, 16, 45), d(1955, 3, 30),
               "P-LNG-005", "F"),
        # 22:30 in São Paulo is 01:30 UTC on April 1st: the month folder must still say March.
        StudySpec("month-boundary", "Mês^Virada", [S(ct, description="Head")], at(2024, 3, 31, 22, 30),
               d(1980, 5, 17), "P-MON-006", "M"),
        StudySpec("undated", "Sem^Data", [S(ct)], None, d(1970, 7, 7), "P-UND-007", "M"),
        StudySpec("date-only", "So^Data", [S(ct)], at(2024, 4, 10), d(1972, 2, 29), "P-DTO-008", "F", date_only=True),
        StudySpec("pet-ct", "Pet^Tomo", [S("PT", description="PET WB"), S(ct, number=2, description="CT AC", offset=600)],
               at(2024, 4, 22, 7, 30), d(1966, 11, 11), "P-PCT-009", "M"),
        StudySpec("pet-only", "Pet^Only", [S("PT", description="PET Brain")], at(2024, 5, 2, 11), d(1949, 4, 4),
               "P-PET-010", "F"),
        StudySpec("sr-only", "Sr^Only", [S("SR", images=1, description="Dose Report")], at(2024, 5, 9, 13),
               d(1985, 9, 9), "P-SR-011", "M"),
        StudySpec("mr-with-sr", "Mr^Roi", [S(mr, description="Spine"),
                                        S("SR", images=1, number=5002, description="OsiriX ROI SR", where="rois",
                                          offset=3600)],
               at(2024, 5, 20, 15), d(1978, 10, 10), "P-ROI-012", "F"),
        StudySpec("multi-frame", "Multi^Frame", [S(mr, description="Localizer"),
                                              S(mr, images=1, number=2, frames=5, description="Cine", rle=rle,
                                                offset=120)],
               at(2024, 6, 3, 9), d(1988, 8, 8), "P-MF-013", "M"),
        StudySpec("linked", "Linked^Cd", [S(ct, description="Outside CD", where="linked")], at(2024, 6, 14, 10, 30),
               d(1992, 2, 2), "P-LNK-014", "F"),
        StudySpec("relative-pathstring", "Relative^Path", [S(ct, where="relative")], at(2024, 7, 1, 8, 15),
               d(1963, 3, 3), "P-REL-015", "M"),
        StudySpec("missing-file", "Missing^One", [S(ct)], at(2024, 7, 19, 17), d(1999, 9, 19), "P-MIS-016", "F",
               missing="one"),
        StudySpec("duplicate-uid-a", "Duplicado^Alfa", [S(ct)], at(2024, 8, 5, 9), d(1950, 5, 5), "P-DUP-017", "M",
               uid=dup_uid),
        StudySpec("duplicate-uid-b", "Duplicado^Beta", [S(ct)], at(2024, 8, 5, 9), d(1951, 6, 6), "P-DUP-018", "F",
               uid=dup_uid),
        StudySpec("arriving", "Chegando^Agora", [S(ct)], at(2024, 9, 9, 9, 9), d(1982, 12, 1), "P-ARR-019", "M"),
        StudySpec("no-files", "Sem^Arquivos", [S(ct)], at(2024, 10, 1, 12, 30), d(1977, 7, 17), "P-NOF-020", "F",
               missing="all"),
    ]
    for i, s in enumerate(specs):
        # Imported days ago with a fractional "now", except the study still arriving a minute ago.
        s.added_ago = 60.0 if s.note == "arriving" else 86400.0 * (5 + i) + 0.25 + i / 8.0
    return specs


def ordinary_specs(count: int, rng: random.Random, images: int, series: int, fraction: float) -> List[StudySpec]:
    specs = []
    for k in range(count):
        modality = "CT" if rng.random() < 0.75 else "MR"
        start = dt.datetime(2023, 1, 1, 7) + dt.timedelta(days=rng.randrange(730), minutes=rng.randrange(720),
                                                          seconds=rng.randrange(60))
        specs.append(StudySpec(
            f"ordinary-{k + 1}", f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}",
            [SeriesSpec(modality, images=images, number=j + 1, description=f"{modality} series {j + 1}",
                     rle=rng.random() < fraction, offset=300.0 * j) for j in range(series)],
            start, dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 65)), f"P{rng.randrange(10 ** 7):07d}",
            rng.choice("MF"), added_ago=86400.0 * rng.uniform(2, 400), description=f"{modality} exam"))
    return specs
