"""Hugging Face Space entry point of the Frames2LoRA demo: the page of `frames2lora app` on the embedded default.

Settings (Space variables): `FRAMES2LORA_MODEL` — another Frames2LoRA checkpoint (directory or Hub id);
`FRAMES2LORA_MAX_UPLOAD_MB` — the largest video accepted (default 50). Gradio reads the host and port from
`GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`, which Spaces set.
"""

import os

from peft_hyper.app import Frames2LoraApp

app = Frames2LoraApp.from_checkpoint(max_upload_mb=float(os.environ.get("FRAMES2LORA_MAX_UPLOAD_MB", "50")))
demo = app.blocks()

if __name__ == "__main__":
    app.launch()
