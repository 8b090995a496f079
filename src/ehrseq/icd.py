"""ICD-9-CM / ICD-10-CM structure: 3-character categories and chapters.

Codes carry their system as a prefix (`ICD9//4019`, `ICD10//I10`), written by the
extract stage from the source's `icd_version`. The system is never guessed from the
code's first letter: `E8889` is an ICD-9 external cause, `E119` an ICD-10 diabetes code.
Codes may come with or without the dot (`E11.65`, `E1165`, `250.00`, `25000`): the dot
is dropped before slicing, so `code[:5]` style slicing of dotted strings never happens.

The category is the first 3 characters, except ICD-9 E codes (external causes), whose
categories have 4 (`E888`).
"""
from __future__ import annotations

import pandas as pd

ICD_SYSTEMS = ("ICD9", "ICD10")

# ICD-9-CM chapters by the numeric 3-digit category; V and E codes are chapters of their own.
_ICD9_CHAPTERS = (
    (1, 139), (140, 239), (240, 279), (280, 289), (290, 319), (320, 389), (390, 459), (460, 519),
    (520, 579), (580, 629), (630, 679), (680, 709), (710, 739), (740, 759), (760, 779), (780, 799),
    (800, 999),
)
# ICD-10-CM chapters by 3-character category (lexicographic ranges; O9A sorts inside O00-O9Z).
_ICD10_CHAPTERS = (
    ("A00", "B99"), ("C00", "D49"), ("D50", "D99"), ("E00", "E99"), ("F00", "F99"), ("G00", "G99"),
    ("H00", "H59"), ("H60", "H99"), ("I00", "I99"), ("J00", "J99"), ("K00", "K99"), ("L00", "L99"),
    ("M00", "M99"), ("N00", "N99"), ("O00", "O9Z"), ("P00", "P99"), ("Q00", "Q99"), ("R00", "R99"),
    ("S00", "T99"), ("U00", "U99"), ("V00", "Y99"), ("Z00", "Z99"),
)


def split_system(code: str) -> tuple[str, str]:
    """`ICD10//E11.65` -> ('ICD10', 'E11.65'); a code without `//` has system ''."""
    system, sep, rest = code.partition("//")
    return (system, rest) if sep else ("", code)


def icd_category(code: str) -> str:
    """The prefixed 3-character category of an ICD code; any other code is returned as is."""
    system, rest = split_system(code)
    if system not in ICD_SYSTEMS:
        return code
    bare = rest.replace(".", "").strip().upper()
    width = 4 if system == "ICD9" and bare.startswith("E") else 3
    return f"{system}//{bare[:width]}"


def icd_chapter(code: str) -> str | None:
    """`ICD9//390-459`, `ICD10//I00-I99`, ...; None for a non-ICD or unrecognised code."""
    system, rest = split_system(icd_category(code))
    if system == "ICD9":
        if rest[:1] in ("V", "E"):
            return f"ICD9//{rest[0]}"
        if not rest.isdigit():
            return None
        number = int(rest)
        return next((f"ICD9//{lo:03d}-{hi:03d}" for lo, hi in _ICD9_CHAPTERS if lo <= number <= hi), None)
    if system == "ICD10":
        return next((f"ICD10//{lo}-{hi}" for lo, hi in _ICD10_CHAPTERS if lo <= rest <= hi), None)
    return None


def group_icd_series(codes: pd.Series) -> pd.Series:
    """`icd_category` over a Series, computed once per distinct code."""
    distinct = pd.Series(codes.unique())
    return codes.map(dict(zip(distinct, distinct.map(icd_category))))
