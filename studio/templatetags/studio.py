from datetime import datetime

from django import template

register = template.Library()


@register.filter
def duration(start: datetime | None, end: datetime | None) -> str:
    """'1 h 02 min', '3 min 05 s', '0.8 s': how long between two times."""
    if not start or not end:
        return ""
    seconds = (end - start).total_seconds()
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


@register.filter
def quantities(values: dict[str, object]) -> str:
    return ", ".join(f"{name} {value}" for name, value in (values or {}).items()) or "—"


@register.filter
def metric(value: object) -> str:
    """A metric's value as a table shows it: four significant digits ('NaN' and the
    infinities as MLflow writes them)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)
