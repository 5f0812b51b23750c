"""Numbers for tables, in the summary and in the wizard."""


def fmt(v, spec: str = ".2f", missing: str = "-") -> str:
    """`v` formatted with `spec`; `missing` for None and NaN."""
    if v is None or v != v:
        return missing
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def fit_number(v, width: int, missing: str = "-") -> str:
    """`v` in at most `width` characters, as precise as that allows (300.045 in 4: '300', not
    the '300.' a column cut gives)."""
    if v is None or v != v:
        return missing
    def short(spec):
        return format(v, spec).replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")

    texts = [short(f".{digits}g") for digits in range(width, 0, -1)] + [short(".0e")]
    return next((t for t in texts if len(t) <= width), min(texts, key=len))
