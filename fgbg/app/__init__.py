"""``fgbg-app``: a Gradio page to animate a reference picture (``conf/app.yaml``, ``docs/app.md``).

    fgbg-app                                  # bundled demo model on http://127.0.0.1:7860
    fgbg-app ckpt_path=model.safetensors port=7870

``fgbg.app.request`` holds the page's logic without Gradio; ``fgbg.app.page``
builds the page; ``fgbg.app.server`` checks the model and serves it.
"""


def main() -> None:
    from fgbg.app.server import main as server_main

    server_main()
