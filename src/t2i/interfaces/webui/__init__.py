"""The web UI (Gradio), mounted by `t2i serve` at / beside the REST API, on the same job queue:
`mount_webui(app, config)` (app.py). Importing this package imports no Gradio; mounting does."""
from t2i.interfaces.webui.app import mount_webui

__all__ = ["mount_webui"]
