"""The Space's page: the Gradio Blocks, the in-browser upload component and the statements on the page.

Gradio plumbing only: every handler delegates to `session.DPSpace` (face mode) or `photo.protect_photo` (photo mode).

Both modes take their picture through one component (`upload_component`): a `gr.HTML` whose script reads the file
in the browser, checks the limits, shrinks it to at most ``PHOTO_SIDE`` px on its long side on a canvas and puts
the PNG data URL in the component's value, which is sent *inside* the next request. Gradio's file upload (which
writes the file to its cache, where its file route serves it to any client that has the path) is not used
anywhere. The photo mode's answer is a data URL too (`photo.photo_view`); the face mode's protected image (a
release, charged) is the only image Gradio serves as a file.
"""

from __future__ import annotations

import inspect
import re
from functools import lru_cache

from .config import SESSION_TTL_S, SpaceConfig
from .hardware import gpu_task
from .images import FACE_SIDE, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, MIN_UPLOAD_SIDE, PHOTO_SIDE
from .session import DPSpace, SubjectSession, View

_UPLOAD_TEMPLATE = """
<div class="dp-upload">
  <div class="dp-title">${title}</div>
  <label class="dp-pick">${pick}
    <input type="file" accept="image/png,image/jpeg,image/webp,image/gif,image/bmp">
  </label>
  ${(typeof value === 'string' ? value : '').startsWith('data:image/')
    ? `<img class="dp-preview" src="${value}" alt="${alt}">`
    : `<div class="dp-empty">${empty}</div>`}
  <div class="dp-msg"></div>
</div>
"""

_UPLOAD_CSS = """
.dp-upload { display: flex; flex-direction: column; gap: 6px; }
.dp-title { font-weight: 600; }
.dp-pick { cursor: pointer; border: 1px dashed var(--border-color-primary); padding: 6px; border-radius: 6px; }
.dp-preview, .dp-empty { width: ${box}px; height: ${box}px; border-radius: 6px; }
.dp-preview { image-rendering: ${rendering}; object-fit: ${fit}; background: #eee; }
.dp-empty { display: flex; align-items: center; justify-content: center; background: #f3f3f3; color: #777; }
.dp-msg { min-height: 1.2em; font-size: 0.9em; }
"""

# Reads the file in the browser, checks the limits, shrinks it to at most `props.side` px on its long side on a canvas,
# and puts the PNG data URL in this component's value (sent with the next request); nothing is uploaded as a file.
_UPLOAD_JS = """
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
    const scale = Math.min(1, props.side / Math.max(w, h));
    const cw = Math.max(1, Math.round(w * scale)), ch = Math.max(1, Math.round(h * scale));
    const canvas = document.createElement('canvas'); canvas.width = cw; canvas.height = ch;
    const ctx = canvas.getContext('2d'); ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(img, 0, 0, w, h, 0, 0, cw, ch);
    props.value = canvas.toDataURL('image/png');
    say('');
    trigger('change');
  };
  img.onerror = () => { URL.revokeObjectURL(url); say('Refused: the browser cannot read this file as an image.'); };
  img.src = url;
});
"""

_PHOTO_OUT_TEMPLATE = """
<div class="dp-photo-out">
  <div class="dp-title">Protected photo</div>
  ${value && value.image
    ? `<div class="dp-frame"><img class="dp-photo" src="${value.image}" alt="protected photo">${
        (value.boxes || []).map(b => `<div class="dp-box" style="left:${b.left}%;top:${b.top}%;width:${b.width}%;`
          + `height:${b.height}%"><span>${b.label}</span></div>`).join('')}</div>
       <a class="dp-download" href="${value.image}" download="protected.png">download the protected photo</a>`
    : `<div class="dp-empty">no protected photo yet</div>`}
</div>
"""

_PHOTO_OUT_CSS = """
.dp-photo-out { display: flex; flex-direction: column; gap: 6px; }
.dp-title { font-weight: 600; }
.dp-frame { position: relative; display: inline-block; max-width: 100%; }
.dp-photo { display: block; max-width: 100%; height: auto; }
.dp-box { position: absolute; border: 2px solid #e11d48; box-sizing: border-box; pointer-events: none; }
.dp-box span { position: absolute; left: 0; top: -1.4em; background: #e11d48; color: white; font-size: 0.75em;
               padding: 0 4px; white-space: nowrap; }
.dp-empty { display: flex; align-items: center; justify-content: center; min-height: 200px; background: #f3f3f3;
            color: #777; border-radius: 6px; }
"""

_PRIVACY_NOTE = """
**What happens to your picture.** A picture you load, in either mode, is read **in your browser** and shrunk there to
at most {side} px on its long side; it is sent to the server only *inside* each request, never as a file, and it is
**never written to disk or to logs** and never part of the feedback. The face mode keeps its centre square (at most
{face_side}×{face_side} px) in this session's memory only (dropped when you close the tab, or after {ttl} h); the
photo mode keeps the photo only while it answers, and sends the protected photo back inside the answer, not as a
file. Limits: files up to **{mb} MB** and **{mp:.1f} megapixels**, each side at least {min_side} px.

**What is stored.** Each judgement you make (ε, δ, the protected attributes and weights, your verdict, what *this
session* has spent, and the *protected* image) is appended to a feedback dataset{hub}. Every image you see is a
release charged to this face's privacy budget **before** it is shown; when the next one would not fit, the app refuses
and charges nothing. The privacy noise always comes from the operating system's cryptographic random source.
"""

_FACE_NOTE = """
**What is a face here?** The budget belongs to the *face*, not to your browser session. The server finds the faces in
the picture (the same detector and alignment in both modes) and keys each one with a secret hash of its aligned
crop's coarse colour layout; the face mode also keys the picture itself (its centre square: a 4×4 grid after the
app's own decoding, blurring and quantising) and charges each release to all of them. **The same face counts as the
same face** when its picture is loaded again, in another tab or session, after *accept*, as PNG or JPEG, at another
size, **or in the other mode**: all of its releases share one budget of ε = {budget:g}. The page tells you what
*this session* spent, never what other sessions spent on a face; a refusal says only that a release does not fit.
**Not recognised as the same face:** another photo of the same person, a crop, an edit, or a face the detector
misses (under 48 px, or turned away) in one mode and finds in the other (these start a budget of their own; the app
cannot tell who a person is, only which faces it has seen). Two different pictures with nearly the same coarse layout
may share one budget (the cautious side). The hash cannot be computed without the server's secret, which is never
shown, logged or stored with the feedback.
"""


def upload_component(elem_id: str, *, title: str, pick: str, empty: str, alt: str, fit: str = "contain",
                     box: int = 256, rendering: str = "auto"):
    """The in-browser upload (a `gr.HTML`): its value is the picture's PNG data URL, read and shrunk in the browser.

    Args:
        elem_id (`str`): the component's id; title, pick, empty, alt (`str`): its texts (title, the file button,
            the empty preview, the preview's alt text).
        fit (`str`): how the preview fills its square (``"cover"`` shows the face mode's centre square).
        box (`int`): the preview's side (px); rendering (`str`): CSS ``image-rendering`` of the preview.
    """
    import gradio as gr

    return gr.HTML(value="", html_template=_UPLOAD_TEMPLATE, css_template=_UPLOAD_CSS, js_on_load=_UPLOAD_JS,
                   elem_id=elem_id, max_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_UPLOAD_PIXELS,
                   min_side=MIN_UPLOAD_SIDE, side=PHOTO_SIDE, title=title, pick=pick, empty=empty, alt=alt, fit=fit,
                   box=box, rendering=rendering)


def _named(fn, names):
    """``fn`` with a signature naming its positional parameters ``names`` (readable API parameter names where the
    handler takes ``*args``), followed by its own keyword-only parameters."""
    own = [p for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    fn.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names] + own)
    return fn


def _weight_name(attribute: str, index: int) -> str:
    name = "weight_" + re.sub(r"\W", "_", attribute)
    return name if name.isidentifier() else f"weight_{index}"


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
        view.session_spent if view.session_spent is not None else skip,
        view.figures if view.figures is not None else skip,
        view.status,
        view.report if view.report is not None else ("" if view.level != "refused" else skip),
        view.session,
    )


def _handlers(space: DPSpace):
    """The Gradio event handlers of ``space``: (protect, more_privacy, more_detail, accept, sample)."""
    import gradio as gr

    names = space.attribute_names

    def on_protect(image, attributes, start_epsilon, session, *weights, progress=gr.Progress(track_tqdm=True)):
        view = space.protect(image, attributes, dict(zip(names, weights)), start_epsilon, session,
                             progress=progress)
        return _outputs_of(view)

    _named(on_protect, ["image", "attributes", "start_epsilon", "session",
                        *(_weight_name(a, i) for i, a in enumerate(names))])

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
        f"Model: {space.model_name} ({size}×{size} px). Each face has a privacy budget of "
        f"ε = {config.budget_epsilon:g} at δ = {config.delta:.0e} over all the images released of it, in all "
        "sessions and both modes.")
    gr.Markdown(_PRIVACY_NOTE.format(side=PHOTO_SIDE, face_side=FACE_SIDE, ttl=SESSION_TTL_S // 3600,
                                     mb=MAX_UPLOAD_BYTES // (1024 * 1024), mp=MAX_UPLOAD_PIXELS / 1e6,
                                     min_side=MIN_UPLOAD_SIDE, hub=hub_note), elem_id="dp-privacy-note")
    gr.Markdown(_FACE_NOTE.format(budget=config.budget_epsilon), elem_id="dp-face-note")


def _photo_mode(space: DPSpace, attributes, release: dict) -> None:
    """A photo of any size: every face detected, protected on its own budget and pasted back (`photo.py`)."""
    import gradio as gr

    from .photo import photo_view, protect_photo

    def on_photo(photo, attributes, epsilon, progress=gr.Progress(track_tqdm=True)):
        annotated, message = protect_photo(space, photo, attributes, epsilon)
        return (photo_view(annotated) if annotated is not None else gr.skip()), message

    with gr.Accordion("Photos with faces (any size): protect every face, keep the rest", open=False):
        gr.Markdown("Each face found (at least 48 px) is aligned, protected at the ε below and charged to its own "
                    "budget, the same budget as that face in the face mode (a face spent here is spent there), then "
                    "pasted back; the rest of the photo is shown as uploaded and is not covered by the guarantee. A "
                    "photo without a face releases nothing. The photo is read and shrunk in your browser and sent "
                    f"inside the request (at most {PHOTO_SIDE} px on its long side); the protected photo comes back "
                    "inside the answer. Neither is written to a file on the server.", elem_id="dp-photo-note")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                photo_in = upload_component("dp-photo-in", title="Photo (stays in your browser and this request)",
                                            pick="Upload a photo…", empty="no photo loaded", alt="photo",
                                            fit="contain", box=320)
            with gr.Column(scale=2, min_width=300):
                photo_out = gr.HTML(value={}, html_template=_PHOTO_OUT_TEMPLATE, css_template=_PHOTO_OUT_CSS,
                                    js_on_load=None, elem_id="dp-photo-out")
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
                original = upload_component("dp-original",
                                            title="Original (stays in your browser and this session's memory)",
                                            pick="Upload a face…", empty="no face loaded", alt="original face",
                                            fit="cover", box=FACE_SIDE, rendering="pixelated")
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
                spent_box = gr.Number(label="ε spent by this session", interactive=False,
                                      elem_id="dp-session-spent")
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

        outs = [protected, epsilon_box, spent_box, figures, status, report, session_state]
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
