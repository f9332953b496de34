"""Running the app under uvicorn, with a graceful stop.

On SIGTERM or Ctrl-C the service stops taking jobs first (requests waiting for a queued job get
503 at once: the job stays queued for the next start), the running job gets `shutdown_grace_s`
to finish, then uvicorn closes the connections and the workers are joined.
"""
from __future__ import annotations

import logging

from t2i.interfaces.api.config import ServeConfig

log = logging.getLogger("t2i.api")


def serve(config: ServeConfig, on_ready=None) -> None:
    """Serve until stopped (blocking). `on_ready(port)` is called once listening (port 0: the one chosen)."""
    import sys

    import uvicorn

    # The workers' sampling loop holds the GIL between short torch calls; a shorter switch interval
    # lets the event loop answer requests (a 422 in milliseconds) while a job runs.
    sys.setswitchinterval(0.001)

    from t2i.interfaces.api.app import create_app

    app = create_app(config)
    service = app.state.service
    from t2i.interfaces.webui import mount_webui

    mount_webui(app, config)  # the web UI at /, on the same queue as the API

    class Server(uvicorn.Server):
        """uvicorn's server, telling the queue service first when a stop signal arrives."""

        def handle_exit(self, sig, frame) -> None:
            service.begin_shutdown()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if on_ready is not None and self.servers:
                on_ready(self.servers[0].sockets[0].getsockname()[1])

    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_config=None, access_log=False,
                               timeout_graceful_shutdown=int(config.shutdown_grace_s) + 5, lifespan="on")
    Server(uv_config).run()
