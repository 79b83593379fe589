from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    """?limit= and ?offset=, with `limit` capped so no request lists everything at once."""

    max_limit = 500
