"""Request parsers: DRF's, with errors instead of a 500 on pathological input."""

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from studio.documents import check_bounds


class JSONParser(parsers.JSONParser):
    """A body nested deeper than Python's recursion limit is a 400, not a crash; so is
    text no database can store (a NUL, a lone surrogate), named by its field."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the document is nested too deeply.") from exc
        check_bounds(data)
        return data
