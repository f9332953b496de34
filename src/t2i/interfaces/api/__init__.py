"""`t2i serve`: the most used web UI's REST API (/sdapi/v1) and t2i's job API (/t2i/v1), on a
persistent job queue. The only package besides the CLI that imports FastAPI and uvicorn.

    config.py      ServeConfig, Limits: what the server was started with (checked before it starts)
    app.py         create_app: middleware, error answers, the routers, the service's life cycle
    server.py      serve(): uvicorn with a graceful stop
    routes_*.py    one router per area: generate, control (progress/interrupt/skip), info, jobs
    models.py      request models from the pipelines' schema + the web UI's own keys
    translate.py   a request -> the params, script, images and model a Session runs
    scripts.py     script_name / script_args -> the scripts' options
    service.py     the queue service: workers (one per device, each with a Session), waiting requests
    store.py       the SQLite job table (transactional states, recovery after a crash)
    live.py        queued/running jobs in memory: control, progress, previews
    runner.py      one job: Session.run -> PNGs (saved and answered) and the web UI's answer JSON
    catalog.py     the checkpoints, VAEs, LoRAs, ... in the configured folders, by name
    security.py    the guard (Host, auth, body size) and safe output paths
    limits.py      the per-request limits; extra networks by name only
    codec.py       base64 images in (checked before decoding) and out
    errors.py      errors as JSON, error ids, no server paths in answers
    logs.py        JSON log lines
"""
