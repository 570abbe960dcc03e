"""One log line per request: uvicorn's access line is dropped where the handler logs instead.

An accepted Halaxy webhook is logged by its handler (`webhook.accepted`: connection, event and
event ids), which says all the access line would and more. Every other answer, refusals
included, keeps uvicorn's access line.
"""

from __future__ import annotations

import logging


class SkipHandlerLogged(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access call: '%s - "%s %s HTTP/%s" %d' % (client, method, path, version,
        # status), in both its h11 and httptools protocols.
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            _, _, path, _, status = args
            return not (status == 202 and str(path).startswith("/webhooks/halaxy/"))
        return True


def log_each_request_once() -> None:
    logging.getLogger("uvicorn.access").addFilter(SkipHandlerLogged())
