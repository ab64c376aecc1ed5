"""The Gradio Blocks page of ``fgbg-app``: controls -> ``GenerationRequest`` -> ``run_request``.

Every failure a person can cause (unreadable upload, no person in the driving
video, too long a request) reaches the page as a message in the status box and
a toast; nothing shows a stack trace (unexpected errors are logged on the
server with theirs and shown by type and message).
"""

from __future__ import annotations

import logging

import gradio as gr

from fgbg.app.examples import DRIVING_EXAMPLES, reference_examples
from fgbg.app.request import GenerationRequest, PageSettings, run_request
from fgbg.generation.camera import KINDS as CAMERA_KINDS

log = logging.getLogger(__name__)

# System fonts only: the default theme would ask Google Fonts, which an offline machine cannot reach.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


# Drawing background paths: strokes on a copy of the reference (#draw-paths), kept as polylines in the
# image's own pixels (a raster layer would lose where a stroke starts) and written as JSON into
# #drawn-paths, which the request reads (fgbg.generation.drawn). Loaded once with the page (launch(js=)).
DRAW_JS = """
() => {
  const S = (window.fgbgPaths = window.fgbgPaths || {strokes: [], current: null, src: null});
  const image = () => document.querySelector('#draw-paths img');
  const field = () => document.querySelector('#drawn-paths textarea');
  const frame = (img) => {  // the picture's rectangle inside the element (object-fit: contain)
    const r = img.getBoundingClientRect(), nw = img.naturalWidth || 1, nh = img.naturalHeight || 1;
    const s = Math.min(r.width / nw, r.height / nh);
    return {r, s, nw, nh, left: r.left + (r.width - nw * s) / 2, top: r.top + (r.height - nh * s) / 2};
  };
  const inside = (e, f) => e.clientX >= f.left && e.clientX <= f.left + f.nw * f.s
    && e.clientY >= f.top && e.clientY <= f.top + f.nh * f.s;
  const point = (e, f) => [Math.min(Math.max((e.clientX - f.left) / f.s, 0), f.nw),
                           Math.min(Math.max((e.clientY - f.top) / f.s, 0), f.nh)];
  const sync = (img) => { if (img && img.currentSrc !== S.src) { S.src = img.currentSrc; S.strokes = []; } };
  function draw() {
    const img = image();
    if (!img) return;
    const host = img.parentElement;
    let c = host.querySelector('canvas.fgbg-paths');
    if (!c) {
      c = document.createElement('canvas');
      c.className = 'fgbg-paths';
      Object.assign(c.style, {position: 'absolute', pointerEvents: 'none', zIndex: 10});
      if (getComputedStyle(host).position === 'static') host.style.position = 'relative';
      host.appendChild(c);
    }
    const f = frame(img), op = c.offsetParent || document.body, h = op.getBoundingClientRect();
    Object.assign(c.style, {left: (f.r.left - h.left - op.clientLeft + op.scrollLeft) + 'px',
                            top: (f.r.top - h.top - op.clientTop + op.scrollTop) + 'px',
                            width: f.r.width + 'px', height: f.r.height + 'px'});
    c.width = f.r.width; c.height = f.r.height;
    const ctx = c.getContext('2d'), ox = f.left - f.r.left, oy = f.top - f.r.top;
    for (const st of S.strokes.concat(S.current ? [S.current] : [])) {
      for (const [colour, width] of [['#000000', 5], ['#ffd60a', 3]]) {  // yellow on a dark edge: seen on any picture
        ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.lineCap = 'round'; ctx.beginPath();
        st.forEach(([x, y], i) => i ? ctx.lineTo(ox + x * f.s, oy + y * f.s) : ctx.moveTo(ox + x * f.s, oy + y * f.s));
        ctx.stroke();
      }
      ctx.fillStyle = '#34c759'; ctx.beginPath();  // a green dot where the stroke starts
      ctx.arc(ox + st[0][0] * f.s, oy + st[0][1] * f.s, 5, 0, 2 * Math.PI); ctx.fill();
    }
  }
  function publish() {
    const t = field(), img = image();
    if (!t || !img) return;
    const r2 = (v) => Math.round(v * 100) / 100;
    t.value = S.strokes.length ? JSON.stringify({width: img.naturalWidth, height: img.naturalHeight,
      strokes: S.strokes.map((st) => st.map(([x, y]) => [r2(x), r2(y)]))}) : '';
    t.dispatchEvent(new Event('input', {bubbles: true}));
  }
  S.clear = () => { S.strokes = []; S.current = null; draw(); };
  if (S.installed) return;
  S.installed = true;
  document.addEventListener('pointerdown', (e) => {
    const img = image();
    if (!img || !img.naturalWidth) return;
    const f = frame(img);
    if (!inside(e, f)) return;
    e.preventDefault(); e.stopPropagation();
    sync(img);
    S.current = [point(e, f)];
    draw();
  }, true);
  document.addEventListener('pointermove', (e) => {
    const img = image();
    if (!S.current || !img) return;
    e.preventDefault();
    S.current.push(point(e, frame(img)));
    draw();
  }, true);
  document.addEventListener('pointerup', () => {
    if (!S.current) return;
    S.strokes.push(S.current); S.current = null;
    draw(); publish();
  }, true);
  document.addEventListener('dragstart', (e) => { if (e.target === image()) e.preventDefault(); }, true);
}
"""

# The drawing copy fills its box (a 64 x 64 picture would be tiny to draw on), pixels kept sharp.
DRAW_CSS = (
    "#draw-paths img { width: 100%; height: 100%; max-height: 200px; object-fit: contain; image-rendering: pixelated; }"
)


def _visible(flag: bool):
    return gr.update(visible=flag)


def build_page(settings: PageSettings) -> gr.Blocks:
    limits = settings.limits
    with gr.Blocks(title="fgbg demo", analytics_enabled=False) as page:
        gr.Markdown(
            f"## {settings.title}\n"
            f"Model: `{settings.base.ckpt_path}`. Up to {limits.max_frames} frames and "
            f"{limits.max_steps} steps a request."
        )
        with gr.Row():
            with gr.Column(scale=1):
                reference = gr.Image(
                    label="Reference image", type="filepath", sources=["upload"], height=240, elem_id="reference"
                )
                gr.Examples(
                    [[str(p)] for p in reference_examples(settings.output_root / "examples")],
                    inputs=[reference], label="Example references",
                )  # fmt: skip
                gr.Markdown(
                    "**Draw background paths** (optional): drag on the picture below; each stroke moves the "
                    "background along it (green dot: where it starts), with a camera preset or a static background."
                )
                draw_paths = gr.Image(
                    label="Draw background paths", show_label=False, type="filepath", interactive=False, height=240,
                    buttons=[], elem_id="draw-paths",
                )  # fmt: skip
                with gr.Row():
                    drawn_paths = gr.Textbox(
                        label="Drawn paths (JSON, reference pixels)", lines=1, max_lines=3, scale=4,
                        elem_id="drawn-paths",
                    )  # fmt: skip
                    clear_paths = gr.Button("Clear paths", size="sm", scale=1, elem_id="clear-paths")
                motion_source = gr.Radio(
                    [("Bundled example clip", "example"), ("Driving video", "video"), ("Pose / tracks file", "file")],
                    value="example", label="Driving motion (foreground)", elem_id="motion-source",
                )  # fmt: skip
                example = gr.Dropdown(
                    [(f"{e.name}: {e.description}", e.name) for e in DRIVING_EXAMPLES],
                    value=DRIVING_EXAMPLES[0].name, label="Example clip", elem_id="example",
                )  # fmt: skip
                driving_video = gr.Video(
                    label="Driving video (pose and tracks are estimated on the spot)", sources=["upload"],
                    visible=False, elem_id="driving-video",
                )  # fmt: skip
                motion_file = gr.File(
                    label="Pose sequence (.json) or preprocessed shard (.tar)", file_types=[".json", ".tar"],
                    visible=False, elem_id="motion-file",
                )  # fmt: skip
                tracks_file = gr.File(
                    label="Background tracks (.npz / .json), optional", file_types=[".npz", ".json"],
                    visible=False, elem_id="tracks-file",
                )  # fmt: skip
                background = gr.Radio(
                    [("The driving motion's own tracks", "tracks"), ("Camera preset", "camera"), ("Static", "static")],
                    value="camera", label="Background motion", elem_id="background",
                )  # fmt: skip
                with gr.Group(visible=True) as camera_controls:
                    preset = gr.Dropdown(
                        [k for k in CAMERA_KINDS if k != "static"], value="pan", label="Camera preset", elem_id="preset"
                    )
                    direction = gr.Slider(0, 360, value=0, step=5, label="Direction (degrees; 0 = right, 90 = down)")
                    speed = gr.Slider(0, 4, value=1.0, step=0.1, label="Speed (pixels per frame)")
                    zoom_rate = gr.Slider(
                        -0.05, 0.05, value=0.01, step=0.005, label="Zoom rate (per frame; > 0 zooms in)"
                    )
                    shake = gr.Slider(0, 4, value=1.5, step=0.1, label="Shake (pixels)")
                num_frames = gr.Slider(
                    1, limits.max_frames, value=min(settings.default_frames, limits.max_frames), step=1,
                    label="Frames", elem_id="num-frames",
                )  # fmt: skip
                steps = gr.Slider(
                    1, limits.max_steps, value=min(settings.default_steps, limits.max_steps), step=1,
                    label="Sampling steps", elem_id="steps",
                )  # fmt: skip
                with gr.Accordion("Guidance per condition (1 = plain conditional sampling)", open=False):
                    guidance = [
                        gr.Slider(0, 5, value=1.0, step=0.1, label=f"{name} guidance")
                        for name in ("reference", "pose", "tracks")
                    ]
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                retarget = gr.Checkbox(
                    value=False, elem_id="retarget",
                    label="Retarget the driving pose to the reference's body (estimates the reference's keypoints)",
                )  # fmt: skip
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                video = gr.Video(
                    label="Generated video", autoplay=True, loop=True, interactive=False, elem_id="result-video"
                )
                sheet = gr.Image(
                    label="Contact sheet: frames with the driving pose and tracks, pose maps",
                    type="filepath", interactive=False, elem_id="sheet",
                )  # fmt: skip
                downloads = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="downloads")
                status = gr.Markdown("Pick a reference and a motion, then press Generate.", elem_id="status")

        motion_source.change(
            lambda s: (_visible(s == "example"), _visible(s == "video"), _visible(s == "file"), _visible(s == "file")),
            motion_source, [example, driving_video, motion_file, tracks_file],
        )  # fmt: skip
        background.change(lambda b: _visible(b == "camera"), background, camera_controls)
        # A new reference: the drawing starts over (the JS forgets strokes when the picture changes).
        reference.change(lambda r: (r, ""), reference, [draw_paths, drawn_paths])
        clear_paths.click(
            None, None, drawn_paths, js="() => { window.fgbgPaths && window.fgbgPaths.clear(); return ''; }"
        )

        def generate_clicked(
            reference, motion_source, example, driving_video, motion_file, tracks_file, background, preset,
            direction, speed, zoom_rate, shake, num_frames, steps, g_reference, g_pose, g_tracks, seed, retarget,
            drawn, progress=gr.Progress(),  # noqa: B008 - Gradio injects the tracker through this default
        ):  # fmt: skip
            request = GenerationRequest(
                reference=reference, motion_source=motion_source, example=example, driving_video=driving_video,
                motion_file=motion_file, tracks_file=tracks_file, background=background, preset=preset,
                direction_deg=direction, speed=speed, zoom_rate=zoom_rate, shake_amplitude=shake,
                num_frames=int(num_frames), steps=int(steps),
                guidance={"reference": g_reference, "pose": g_pose, "tracks": g_tracks},
                seed=int(seed or 0), retarget=bool(retarget), drawn_paths=drawn or "",
            )  # fmt: skip
            try:
                result = run_request(
                    request, settings.base, limits, settings.output_root,
                    progress=lambda fraction, what: progress(fraction, desc=what),
                )  # fmt: skip
            except (ValueError, OSError) as err:  # InputError, MotionError, RequestError, missing files
                return _failed(str(err))
            except Exception as err:  # noqa: BLE001 - shown on the page, logged here with the traceback
                log.exception("request failed")
                return _failed(f"generation failed ({type(err).__name__}): {err}")
            return str(result.video), str(result.sheet), [str(p) for p in result.downloads], f"Done: {result.summary()}"

        run.click(
            generate_clicked,
            [reference, motion_source, example, driving_video, motion_file, tracks_file, background, preset,
             direction, speed, zoom_rate, shake, num_frames, steps, *guidance, seed, retarget, drawn_paths],
            [video, sheet, downloads, status],
            show_progress="full",
        )  # fmt: skip
    return page


def _failed(message: str):
    gr.Warning(message)
    return None, None, None, f"**Error:** {message}"
