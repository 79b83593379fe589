"""MLflow's errors: each with its code (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE...),
which the REST API answers with MLflow's own status and shape."""


class TrackingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> TrackingError:
    return TrackingError("INVALID_PARAMETER_VALUE", message)
