"""The Space's page: the Gradio Blocks, the in-browser upload component and the statements on the page.

Gradio plumbing only: every handler delegates to `session.DPSpace`, which returns a `session.View`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .config import SESSION_TTL_S, SpaceConfig
from .hardware import gpu_task
from .images import BROWSER_SIDE, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, MIN_UPLOAD_SIDE
from .session import DPSpace, SubjectSession, View

_ORIGINAL_TEMPLATE = """
<div class="dp-original">
  <div class="dp-title">Original (stays in your browser and this session's memory)</div>
  <label class="dp-pick">Upload a face…
    <input type="file" accept="image/png,image/jpeg,image/webp,image/gif,image/bmp">
  </label>
  ${(value || '').startsWith('data:image/')
    ? `<img class="dp-preview" src="${value}" alt="original face">`
    : `<div class="dp-empty">no face loaded</div>`}
  <div class="dp-msg"></div>
</div>
"""

_ORIGINAL_CSS = """
.dp-original { display: flex; flex-direction: column; gap: 6px; }
.dp-title { font-weight: 600; }
.dp-pick { cursor: pointer; border: 1px dashed var(--border-color-primary); padding: 6px; border-radius: 6px; }
.dp-preview, .dp-empty { width: 256px; height: 256px; border-radius: 6px; }
.dp-preview { image-rendering: pixelated; object-fit: contain; background: #eee; }
.dp-empty { display: flex; align-items: center; justify-content: center; background: #f3f3f3; color: #777; }
.dp-msg { min-height: 1.2em; font-size: 0.9em; }
"""

# Reads the file in the browser, checks the limits, centre-crops and shrinks it on a canvas, and puts the PNG data
# URL in this component's value (sent with the next request); nothing is uploaded as a file.
_ORIGINAL_JS = """
element.addEventListener('change', (ev) => {
  const input = ev.target;
  if (!input || !input.matches || !input.matches('input[type=file]')) return;
  const file = input.files && input.files[0];
  const say = (text) => { const m = element.querySelector('.dp-msg'); if (m) m.textContent = text; };
  if (!file) return;
  if (file.size > props.max_bytes) {
    say(`Refused: the file is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${props.max_bytes / 1048576} MB.`);
    input.value = ''; return;
  }
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    URL.revokeObjectURL(url);
    const w = img.naturalWidth, h = img.naturalHeight;
    if (w * h > props.max_pixels) {
      say(`Refused: ${w}x${h} px is over the ${(props.max_pixels / 1e6).toFixed(1)} MP limit.`); return;
    }
    if (Math.min(w, h) < props.min_side) { say(`Refused: each side must be at least ${props.min_side} px.`); return; }
    const side = Math.min(w, h), out = Math.min(props.side, side);
    const canvas = document.createElement('canvas'); canvas.width = out; canvas.height = out;
    const ctx = canvas.getContext('2d'); ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(img, (w - side) / 2, (h - side) / 2, side, side, 0, 0, out, out);
    props.value = canvas.toDataURL('image/png');
    trigger('change');
  };
  img.onerror = () => { URL.revokeObjectURL(url); say('Refused: the browser cannot read this file as an image.'); };
  img.src = url;
});
"""

_PRIVACY_NOTE = """
**What happens to your photo.** The original is read and shrunk to {side}×{side} px **in your browser**; it is sent
to the server only inside each request and kept only in this session's memory (dropped when you close the tab, or
after {ttl} h). It is **never written to disk or to logs**, and it is never part of the feedback. Limits: files up to
**{mb} MB** and **{mp:.1f} megapixels**, each side at least {min_side} px.

**What is stored.** Each judgement you make (ε, δ, the protected attributes and weights, your verdict and the
*protected* image) is appended to a feedback dataset{hub}. Every image you see is a release charged to this face's
privacy budget **before** it is shown; when the next one would exceed the budget, the app refuses and charges nothing.
The privacy noise always comes from the operating system's cryptographic random source.
"""

_FACE_NOTE = """
**What is a face here?** The budget belongs to the *picture*, not to your browser session: the server keys it with a
secret hash of the picture's coarse colour layout (a 4×4 grid after the app's own decoding, blurring and
quantising). **The same picture counts as the same face** when it is uploaded again, in another tab or session,
after *accept*, as PNG or JPEG, or at another size: all of its images share one budget of
ε = {budget:g}. **Not recognised as the same face:** another photo of the same person, a crop, or an edit (these
start a budget of their own; the app cannot tell who a person is, only which picture it has seen). Two different
pictures with nearly the same coarse layout may share one budget (the cautious side). The hash cannot be computed
without the server's secret, which is never shown, logged or stored with the feedback.
"""


@lru_cache(maxsize=1)
def _private_blocks_class():
    import gradio as gr

    class PrivateBlocks(gr.Blocks):
        """`gr.Blocks` whose `launch` defaults to ``run_history=False``: Gradio's run history would keep each
        request's inputs (the original face) in the browser's storage."""

        def launch(self, *args, **kwargs):
            kwargs.setdefault("run_history", False)
            kwargs.setdefault("footer_links", ["api", "gradio", "settings"])
            return super().launch(*args, **kwargs)

    return PrivateBlocks


def _outputs_of(view: View):
    import gradio as gr

    if view.level == "refused":
        gr.Warning(re.sub(r"\*\*", "", view.status), duration=15)
    skip = gr.skip()
    return (
        view.protected if view.protected is not None else skip,
        view.epsilon if view.epsilon is not None else skip,
        view.budget_left if view.budget_left is not None else skip,
        view.figures if view.figures is not None else skip,
        view.status,
        view.report if view.report is not None else ("" if view.level != "refused" else skip),
        view.session,
    )


def _handlers(space: DPSpace):
    """The Gradio event handlers of ``space``: (protect, more_privacy, more_detail, accept, sample)."""
    import gradio as gr

    names = space.attribute_names

    def on_protect(image, attributes, start_eps, session, *weights, progress=gr.Progress(track_tqdm=True)):
        view = space.protect(image, attributes, dict(zip(names, weights)), start_eps, session, progress=progress)
        return _outputs_of(view)

    def on_more_privacy(session, progress=gr.Progress(track_tqdm=True)):
        return _outputs_of(space.feedback("more_privacy", session, progress=progress))

    def on_more_detail(session, progress=gr.Progress(track_tqdm=True)):
        return _outputs_of(space.feedback("more_detail", session, progress=progress))

    def on_accept(session):
        return _outputs_of(space.feedback("accept", session))

    def on_sample(index):
        try:
            return space.sample(index)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    # the handlers that generate images hold the GPU on ZeroGPU hardware (spaces.GPU); elsewhere unchanged
    return gpu_task(on_protect), gpu_task(on_more_privacy), gpu_task(on_more_detail), on_accept, on_sample


def _intro(space: DPSpace, config: SpaceConfig, hub_note: str) -> None:
    import gradio as gr

    size = space.pipe.image_size
    gr.Markdown(
        "# How much privacy is enough?\n"
        f"Protect a face's sensitive attributes with differential privacy, judge the result, and steer ε. "
        f"Model: `{space.model_name}` ({size}×{size} px). Each face has a privacy budget of "
        f"ε = {config.budget_epsilon:g} at δ = {config.delta:.0e} over all the images released of it, in all "
        "sessions.")
    gr.Markdown(_PRIVACY_NOTE.format(side=BROWSER_SIDE, ttl=SESSION_TTL_S // 3600,
                                     mb=MAX_UPLOAD_BYTES // (1024 * 1024), mp=MAX_UPLOAD_PIXELS / 1e6,
                                     min_side=MIN_UPLOAD_SIDE, hub=hub_note), elem_id="dp-privacy-note")
    gr.Markdown(_FACE_NOTE.format(budget=config.budget_epsilon), elem_id="dp-face-note")


def _photo_mode(space: DPSpace, attributes, release: dict) -> None:
    """A photo of any size: every face detected, protected on its own budget and pasted back (`photo.py`)."""
    import gradio as gr

    from .photo import protect_photo

    def on_photo(photo, attrs, eps, progress=gr.Progress(track_tqdm=True)):
        return protect_photo(space, photo, attrs, eps)

    with gr.Accordion("Photos with faces (any size): protect every face, keep the rest", open=False):
        gr.Markdown("Each face found (at least 48 px) is aligned, protected at the ε below and charged to its own "
                    "budget (the same face in a re-upload is the same budget), then pasted back; the rest of the "
                    "photo is shown as uploaded and is not covered by the guarantee. A photo without a face "
                    "releases nothing. The photo is not stored.", elem_id="dp-photo-note")
        with gr.Row():
            photo_in = gr.Image(label="Photo", type="numpy", sources=["upload"], elem_id="dp-photo-in")
            photo_out = gr.AnnotatedImage(label="Protected faces", elem_id="dp-photo-out")
        with gr.Row():
            photo_eps = gr.Number(value=space.config.start_epsilon, label="ε of each face",
                                  minimum=space.config.min_epsilon, maximum=space.config.max_epsilon,
                                  elem_id="dp-photo-epsilon")
            photo_btn = gr.Button("Protect the faces", variant="primary", elem_id="dp-photo-protect")
        photo_status = gr.Markdown(elem_id="dp-photo-status")
    photo_btn.click(gpu_task(on_photo), [photo_in, attributes, photo_eps], [photo_out, photo_status],
                    api_name="protect_photo", **{k: v for k, v in release.items() if k != "show_progress_on"})


def build_page(space: DPSpace, *, hub_note: str):
    """The Space's `gr.Blocks` (queued) around ``space``.

    Args:
        space (`DPSpace`): the logic behind the page.
        hub_note (`str`): where the feedback goes, for the privacy statement.

    Returns:
        `gr.Blocks`
    """
    import gradio as gr

    config = space.config
    on_protect, on_more_privacy, on_more_detail, on_accept, on_sample = _handlers(space)
    with _private_blocks_class()(title="dpdiffusion: how much privacy is enough?", analytics_enabled=False,
                                 delete_cache=(3600, 3600)) as demo:
        _intro(space, config, hub_note)
        session_state = gr.State(SubjectSession(), time_to_live=SESSION_TTL_S)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                original = gr.HTML(value="", html_template=_ORIGINAL_TEMPLATE, css_template=_ORIGINAL_CSS,
                                   js_on_load=_ORIGINAL_JS, elem_id="dp-original", max_bytes=MAX_UPLOAD_BYTES,
                                   max_pixels=MAX_UPLOAD_PIXELS, min_side=MIN_UPLOAD_SIDE, side=BROWSER_SIDE)
                with gr.Row():
                    sample_index = gr.Slider(0, config.num_samples - 1, value=0, step=1,
                                             label="SynthFaces sample", elem_id="dp-sample-index")
                    sample_btn = gr.Button("Use this sample", elem_id="dp-sample", size="sm")
            with gr.Column(scale=1, min_width=300):
                protected = gr.Image(label="Protected", type="numpy", format="png", interactive=False,
                                     height=300, elem_id="dp-protected", buttons=["download"])
            with gr.Column(scale=1, min_width=260):
                epsilon_box = gr.Number(label="ε of this image", interactive=False, elem_id="dp-epsilon",
                                        precision=None)
                budget_box = gr.Number(label="budget left (ε)", interactive=False, elem_id="dp-budget-left")
                with gr.Row():
                    more_privacy_btn = gr.Button("More privacy", elem_id="dp-more-privacy", variant="secondary")
                    more_detail_btn = gr.Button("More detail", elem_id="dp-more-detail", variant="secondary")
                accept_btn = gr.Button("Accept", elem_id="dp-accept", variant="primary")
        status = gr.Markdown("Load a face, choose what to protect, and press **Protect**.", elem_id="dp-status")
        with gr.Row():
            with gr.Column(scale=1):
                attributes = gr.CheckboxGroup(list(space.attribute_names), value=space.default_attributes,
                                              label="Protected attributes", elem_id="dp-attributes")
                weight_sliders = [gr.Slider(0.1, 10.0, value=1.0, step=0.1, label=f"weight: {a}",
                                            elem_id=f"dp-weight-{a}") for a in space.attribute_names]
                start_eps = gr.Number(value=config.start_epsilon, label="starting ε", minimum=config.min_epsilon,
                                      maximum=config.max_epsilon, elem_id="dp-start-epsilon")
                protect_btn = gr.Button("Protect", variant="primary", elem_id="dp-protect")
            with gr.Column(scale=2):
                figures = gr.Markdown(elem_id="dp-figures")
                report = gr.Markdown(elem_id="dp-report")

        outs = [protected, epsilon_box, budget_box, figures, status, report, session_state]
        release = dict(concurrency_limit=config.max_concurrent_releases, concurrency_id="release",
                       show_progress="full", show_progress_on=[protected])
        protect_btn.click(on_protect, [original, attributes, start_eps, session_state, *weight_sliders], outs,
                          api_name="protect", **release)
        more_privacy_btn.click(on_more_privacy, [session_state], outs, api_name="more_privacy", **release)
        more_detail_btn.click(on_more_detail, [session_state], outs, api_name="more_detail", **release)
        accept_btn.click(on_accept, [session_state], outs, api_name="accept", concurrency_limit=None)
        sample_btn.click(on_sample, [sample_index], [original], api_name="sample", concurrency_limit=None)
        _photo_mode(space, attributes, release)
    demo.queue(max_size=64)
    return demo
