"""The kinds of refusal every app raises from its domain code, so that each surface (API,
pages, CLI through the API) answers them the same way without knowing the app."""


class FieldErrors(Exception):
    """Bad input: one (field path, message) pair per problem, all of them at once (400)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
        self.errors = errors


class Conflict(Exception):
    """The thing is not in a state that allows this (409): canceling a finished job,
    deleting a compute target that jobs still use."""
