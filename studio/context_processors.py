from typing import Any

from django.http import HttpRequest

from studio import access


def studio(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "is_it_ops": access.is_it_ops(user),
        "nav_workspaces": access.visible_workspaces(user),
    }
