"""Money as integers of micro-units (1e-6 of the currency), so no charge ever passes through a float."""

from __future__ import annotations

from decimal import Decimal

MICRO = 1_000_000


def to_micro(amount: Decimal | int | str) -> int:
    """Exact conversion; an amount finer than a micro-unit is an input error, not something to round."""
    value = Decimal(str(amount)) * MICRO
    if value != value.to_integral_value():
        raise ValueError(f"{amount} has more than 6 decimal places")
    return int(value)


def from_micro(micro: int) -> Decimal:
    return (Decimal(micro) / MICRO).normalize()


def format_micro(micro: int) -> str:
    """A fixed 6-decimal string for exports and APIs: stable bytes, no exponent notation."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def plain_number(value: Decimal | int) -> int | float:
    """For YAML and JSON written for people: 10000 rather than 10000.000000."""
    value = Decimal(value)
    return int(value) if value == value.to_integral_value() else float(value)
