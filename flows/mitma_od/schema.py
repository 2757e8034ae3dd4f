"""The published MITMA v2 OD schema and the names it gets in DuckDB: columns, types, tables.

Imported by the guarded staging and loading children, so it imports nothing heavy.
"""

from __future__ import annotations

import re
from typing import Literal

from headroom.errors import BadInput

ZONE_TYPES = ("distritos", "municipios", "GAU")
ZoneType = Literal["distritos", "municipios", "GAU"]
# The published header, in order (MITMA study v2, 2022 onwards).
COLUMNS = (
    "fecha",
    "periodo",
    "origen",
    "destino",
    "distancia",
    "actividad_origen",
    "actividad_destino",
    "estudio_origen_posible",
    "estudio_destino_posible",
    "residencia",
    "renta",
    "edad",
    "sexo",
    "viajes",
    "viajes_km",
)
_HOURS = ", ".join(f"'{h}'" for h in [*(f"{h:02d}" for h in range(24)), *map(str, range(10))])
_ACTIVITIES = "ENUM('casa', 'trabajo_estudio', 'frecuente', 'no_frecuente')"
# How DuckDB reads each column. Every column with a published domain is an ENUM: a value
# outside it is a rejected row with its line number, not a silent NULL or a stray string, and
# ENUM codes are cheaper to parse, stage and load than short strings. ``NA`` is read as NULL
# before the ENUM applies.
CSV_TYPES = {
    "fecha": "DATE",
    "periodo": f"ENUM({_HOURS})",
    "origen": "VARCHAR",
    "destino": "VARCHAR",
    "distancia": "ENUM('0.5-2', '2-10', '10-50', '>50')",
    "actividad_origen": _ACTIVITIES,
    "actividad_destino": _ACTIVITIES,
    "estudio_origen_posible": "ENUM('si', 'no')",
    "estudio_destino_posible": "ENUM('si', 'no')",
    "residencia": "VARCHAR",
    "renta": "ENUM('<10', '10-15', '>15')",
    "edad": "ENUM('0-25', '25-45', '45-65', '65-100')",
    "sexo": "ENUM('hombre', 'mujer')",
    "viajes": "DECIMAL(18,6)",
    "viajes_km": "DECIMAL(18,6)",
}
# The bronze table: the published columns with their analytical types, plus provenance.
BRONZE_TABLE = "bronze_viajes"
LOADS_TABLE = "mitma_loads"
SILVER_VIEW = "silver_od_hourly"
ZONE_TYPE_ENUM = f"ENUM({', '.join(repr(z) for z in ZONE_TYPES)})"
# Bronze keeps each published domain as the ENUM it is staged with (queries read them as text:
# `sexo = 'mujer'`, LIKE, ||, and a value outside the domain simply matches nothing): a one-byte
# code is cheaper to store and insert than a short string. The insert names its columns and
# DuckDB casts each value, so a bronze table whose domains are text columns is filled the same
# way and needs no migration.
# Zone ids and the province of residence stay text: their domains are not closed.
BRONZE_TYPES = {
    **CSV_TYPES,
    "periodo": "TINYINT",
    "estudio_origen_posible": "BOOLEAN",
    "estudio_destino_posible": "BOOLEAN",
    "zone_type": ZONE_TYPE_ENUM,
    "source_file": "VARCHAR",
}
# ENUM to analytical type without going through text: the hour ENUM lists '00'..'23' then
# '0'..'9'; the si/no ENUM has 'si' first.
STAGE_EXPRESSIONS = {
    "periodo": "CAST(enum_code(periodo) % 24 AS TINYINT) AS periodo",
    "estudio_origen_posible": "(enum_code(estudio_origen_posible) = 0) AS estudio_origen_posible",
    "estudio_destino_posible": "(enum_code(estudio_destino_posible) = 0) AS "
    "estudio_destino_posible",
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def identifier(name: str) -> str:
    """``name`` double-quoted for SQL, after checking it is a plain identifier."""
    if not _IDENTIFIER.match(name):
        raise BadInput(f"not a valid SQL identifier: {name!r}")
    return f'"{name}"'


def check_zone_type(zone_type: str) -> None:
    """Raise BadInput unless ``zone_type`` is a published zone type."""
    if zone_type not in ZONE_TYPES:
        raise BadInput(f"zone_type: expected one of {', '.join(ZONE_TYPES)}, got {zone_type!r}")
