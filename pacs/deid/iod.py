"""The type (PS3.5 7.4) of an attribute at a place in an IOD, which decides X/Z/D choices.

The module and attribute tables of PS3.3 are read from highdicom, which ships them as data
(``highdicom/_standard``): for each IOD its modules, and for each module every attribute with
its sequence path and type. An attribute that occurs in several modules of the IOD takes its
strictest type.
"""

from __future__ import annotations

from functools import cache

# Strictness of the types: what a present attribute must keep to stay conformant.
_STRICTNESS = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}

Place = tuple[tuple[str, ...], str]  # (keywords of the enclosing sequences, keyword)


def attribute_type(sop_class_uid: str, path: tuple[str, ...], keyword: str) -> str | None:
    """The type of *keyword* inside the sequences *path* of the IOD of *sop_class_uid*.

    Returns
    -------
    str or None
        "1", "1C", "2", "2C" or "3"; None when the SOP class's IOD is not in the tables or
        the attribute is not listed at that place (the caller then chooses conservatively).
    """
    iod = _sop_class_iods().get(sop_class_uid)
    if iod is None:
        return None
    return _iod_types(iod).get((path, keyword))


@cache
def _sop_class_iods() -> dict[str, str]:
    from highdicom._standard_utils import get_sop_class_iod_map  # a large JSON: load on use

    return dict(get_sop_class_iod_map())


@cache
def _iod_types(iod: str) -> dict[Place, str]:
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map

    modules = get_module_attribute_map()
    types: dict[Place, str] = {}
    for module in get_iod_module_map()[iod]:
        for attribute in modules.get(module["key"], []):
            place = (tuple(attribute["path"]), attribute["keyword"])
            found = str(attribute["type"])
            known = types.get(place)
            if known is None or _STRICTNESS.get(found, 4) < _STRICTNESS.get(known, 4):
                types[place] = found
    return types
