"""MLflow's errors: each with its code (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE...),
which the REST API answers with MLflow's own status and shape."""


class TrackingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> TrackingError:
    return TrackingError("INVALID_PARAMETER_VALUE", message)


INT64 = 2**63


def int64(value: object, name: str) -> int:
    """An MLflow int64 field (a JSON number, or its text as protobuf's JSON allows), within
    int64 as MLflow's protobuf checks it; else MLflow's INVALID_PARAMETER_VALUE."""
    whole = (
        (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, float) and value.is_integer())
        or (isinstance(value, str) and value.strip().lstrip("+-").isdigit())
    )
    number = int(value) if whole else None  # type: ignore[call-overload]
    if number is None or not -INT64 <= number < INT64:
        shown = str(value) if len(str(value)) <= 40 else str(value)[:40] + "..."
        raise invalid(f"Invalid value {shown} for parameter '{name}' supplied.")
    return number
