"""How the routes under `/users/{sub}/` match a path.

Their paths spell the sub `{sub:subject}`. Starlette's `{sub:path}` is `.*` in a pattern ending in
`$`: `.` stops at a newline, so a sub holding `%0A` would match no route (an unaudited 404 before
authentication, where any other invalid sub gets 401 or 422), and `$` also matches before a final
newline, so `/users/alice/api-key%0A` would be served as Alice's key. A `subject` takes any
character, and no path ending in a newline.
"""

from __future__ import annotations

from typing import Final

from starlette.convertors import PathConvertor, register_url_convertor


class SubjectConvertor(PathConvertor):
    regex = r"(?![\s\S]*\n\Z)[\s\S]*"


# Registered on import, before the routes spelling it are declared (they import SUBJECT_PATH).
register_url_convertor("subject", SubjectConvertor())
SUBJECT_PATH: Final = "/users/{sub:subject}"
