"""Numbers for tables, in the summary and in the wizard."""


def fmt(v, spec: str = ".2f", missing: str = "-") -> str:
    """`v` formatted with `spec`; `missing` for None and NaN."""
    if v is None or v != v:
        return missing
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)
