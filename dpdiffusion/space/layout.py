"""The Space's page: the Gradio Blocks, the in-browser upload component and the statements on the page.

Gradio plumbing only: every handler delegates to `session.DPSpace` (face mode) or `photo.protect_photo` (photo mode).
What the page offers follows the session after each answer (`page_controls`: no figure before a release, the judgement
buttons only while an image awaits judgement; `shown_weights`: a weight for each ticked attribute), through events
that are not part of the API; while the model knows only synthetic faces a banner says so (`domain_banner`).

Both modes take their picture through one component (`upload_component`): a `gr.HTML` whose script reads the file
in the browser, checks the limits, shrinks it to at most ``PHOTO_SIDE`` px on its long side on a canvas and puts
the PNG data URL in the component's value, which is sent *inside* the next request. Gradio's file upload (which
writes the file to its cache, where its file route serves it to any client that has the path) is not used
anywhere, and its upload route refuses every file (``max_file_size=0``). The photo mode's answer is a data URL too
(`photo.photo_view`); the face mode's protected image (a release, charged) is the only image Gradio serves as a file,
from its temporary folder (0700), deleted 60 to 65 min after it is written (`CACHE_DELETION`).

What Gradio itself would keep, and how the page stops it (`PrivateBlocks`, measured in
``tests/attacks/test_space_uploads.py``): each session's stored page config (the uploads and the photo answer are
set back to their initial value there), the queue's last request (its body is dropped once parsed, and the values
of the uploads in it blanked), the deep-link route (removed), the monitoring routes (off), the run history (off).
The face mode's session state (its centre square and last release) is dropped when the tab closes (an unload
handler) or ``SESSION_TTL_S`` after the session's last answer.
"""

from __future__ import annotations

import contextlib
import copy
import html
import inspect
import os
import re
import stat
from functools import lru_cache
from pathlib import Path

from .config import SESSION_TTL_S, SpaceConfig, synthetic_domain
from .hardware import gpu_task
from .images import FACE_SIDE, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, MIN_UPLOAD_SIDE, PHOTO_SIDE
from .session import DPSpace, SubjectSession, View

# Gradio's delete_cache: every 5 min, the files it wrote more than an hour ago (the face mode's releases) are deleted,
# so a release's file lasts 60 to 65 min (and all of them go when the server stops)
CACHE_DELETION = (300, 3600)

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
at most {side} px on its long side; it is sent to the server only *inside* each request, never as a file (the server
refuses file uploads), and it is **never written to a file or to logs** and never part of the feedback. The server
holds it in memory while it answers; once it has answered, it keeps no copy of the request. The face mode keeps only
the picture's centre square (at most {face_side}×{face_side} px) and the last image released of it, in this session's
memory, dropped when you close or reload the tab, or {ttl} h after the session's last answer. The photo mode keeps
nothing once it has answered: the protected photo comes back inside the answer, not as a file. The face mode's
protected image is served as a file from the server's temporary folder (private to the server's user) and deleted
{cache_min} to {cache_max} minutes after it is made while the server runs (all of them when it stops). Limits: files
up to **{mb} MB** and **{mp:.1f} megapixels**, each side at least {min_side} px.

**What is stored.** Each judgement you make (ε, δ, the protected attributes and weights, your verdict, what *this
session* has spent, and the *protected* image) is appended to a feedback dataset{hub}. Every image you see is a
release charged to this face's privacy budget **before** it is shown; when the next one would not fit, the app refuses
and charges nothing. The privacy noise always comes from the operating system's cryptographic random source.
"""

_FACE_NOTE = """
**What is a face here?** The budget belongs to the *face*, not to your browser session. The server finds the faces in
the picture (the same detector and alignment in both modes) and keys each one with secret hashes of its aligned
crop's luminance layout and, where it can, of the person's face descriptor; the face mode also keys the picture
itself (its centre square) and charges each release to all of them. **The same face counts as the same face** when
its picture is loaded again, in another tab or session, after *accept*, as PNG or JPEG, at another size, **in the
other mode**, or after an ordinary edit (a mirror image, grey, brightness or contrast within 10 %, a border up to
8 px, a crop up to 10 %, a turn up to 3 degrees); another photo of the same person often does too. All of its
releases share one budget of ε = {budget:g}. Every release of a face must also protect at least the attributes its
first release protected, in whatever session. The page tells you what *this session* spent, never what other
sessions spent on a face or which attributes they protected; a refusal says only that a release does not fit.
Refusals are free and still depend on other sessions, though: someone holding the picture can bound what a face has
spent by asking at smaller and smaller ε, and can find which attributes its first release protected by asking, at a
tiny ε, with one attribute left out at a time (the requests that leave out a protected one are refused).
**Not recognised as the same face:** larger edits, a photo of the person that looks too different, or a face the
detector misses (under 48 px, or turned away) in one mode and finds in the other (these start a budget of their
own). Two different faces that look much alike may share one budget (the cautious side). The hashes cannot be
computed without the server's secret, which is never shown, logged or stored with the feedback.
"""


def upload_component(elem_id: str, *, title: str, pick: str, empty: str, alt: str, fit: str = "contain",
                     box: int = 256, rendering: str = "auto", label: str = "image"):
    """The in-browser upload (a `gr.HTML`): its value is the picture's PNG data URL, read and shrunk in the browser.

    Args:
        elem_id (`str`): the component's id; title, pick, empty, alt (`str`): its texts (title, the file button,
            the empty preview, the preview's alt text).
        fit (`str`): how the preview fills its square (``"cover"`` shows the face mode's centre square).
        box (`int`): the preview's side (px); rendering (`str`): CSS ``image-rendering`` of the preview.
        label (`str`): its name in the API where an endpoint returns it (not shown on the page).
    """
    import gradio as gr

    return gr.HTML(value="", html_template=_UPLOAD_TEMPLATE, css_template=_UPLOAD_CSS, js_on_load=_UPLOAD_JS,
                   label=label, show_label=False, elem_id=elem_id, max_bytes=MAX_UPLOAD_BYTES,
                   max_pixels=MAX_UPLOAD_PIXELS, min_side=MIN_UPLOAD_SIDE, side=PHOTO_SIDE, title=title, pick=pick,
                   empty=empty, alt=alt, fit=fit, box=box, rendering=rendering)


_BANNER_CSS = """
.dp-banner { border: 2px solid #d97706; background: #fffbeb; color: #78350f; border-radius: 8px; padding: 10px 14px; }
.dp-banner strong { color: #78350f; }
.dp-banner pre { margin: 6px 0 0; padding: 6px 8px; background: #fef3c7; color: #451a03; border-radius: 4px;
                 white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.85em; }
"""


def domain_banner(space: DPSpace):
    """The banner shown while the Space serves a model that knows only synthetic faces (`config.synthetic_domain`,
    e.g. the embedded default: SynthFaces, 32 px, cartoons): what the model is and how to serve real faces (convert
    the official DiffAE checkpoint, then launch the Space with ``--model``). HTML; `None` for any other model.

    Only public facts about the model (its name as `config.public_model_name` gives it, and its declared domain)."""
    domain = synthetic_domain(space.pipe)
    if domain is None:
        return None
    from ..models.training_domain import REAL_FACE_CHECKPOINT, REAL_FACE_COMMANDS

    size = f"{domain.resolution} px" if domain.resolution is not None else "its training resolution"
    kind = "cartoon" if domain.name == "SynthFaces" else "synthetic"
    esc = html.escape
    return (
        f'<div class="dp-banner" role="note"><strong>Demonstration model: it knows only synthetic faces.</strong> '
        f"This Space serves <strong>{esc(space.model_name)}</strong> ({esc(domain.summary())}), trained only on "
        f"{esc(domain.description)} On a photo of a real person it can only draw a blurred {esc(size)} {kind} face, "
        "at any ε. To protect real faces, convert the official Diffusion Autoencoder checkpoint (FFHQ, 256 px: "
        "download <code>ffhq256_autoenc/</code> and <code>ffhq256_autoenc_cls/</code> from "
        "https://github.com/phizaz/diffae) and launch the Space with it:"
        f"<pre>{esc(REAL_FACE_COMMANDS[0])}\ndpdiffusion space --model {esc(REAL_FACE_CHECKPOINT)}</pre></div>")


def page_controls(session) -> dict:
    """What the face mode's page offers for ``session`` (pure, no Gradio).

    Returns:
        `dict`: ``figures``: the figures of a release are shown (after the session's first release; before it the
        page shows a dash, not 0); ``judge``: *More privacy*, *More detail* and *Accept* can be pressed (an image is
        shown and the session is not accepted).
    """
    released = session is not None and session.protected is not None
    return {"figures": released, "judge": released and not session.finished}


def shown_weights(names, ticked) -> list:
    """Which weight sliders the page shows: those of the ticked attributes (``names`` in order; pure)."""
    ticked = set(ticked or ())
    return [name in ticked for name in names]


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


# Gradio routes the Space removes before its server answers a request: ``/gradio_api/deep_link`` writes a session's
# page config (its component values) to ``GRADIO_TEMP_DIR/deep_links/<id>/state.json``, never deleted, and
# ``/config?deep_link=<id>`` serves it back to any client; the page has no deep-link button.
_DROPPED_ROUTES = ("/gradio_api/deep_link",)


def _without_routes(user_lifespan, paths):
    """A lifespan (run by the server before it answers any request) that removes the routes at ``paths``, then runs
    ``user_lifespan`` (if any)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in paths]
        if user_lifespan is None:
            yield None
        else:
            async with user_lifespan(app) as state:
                yield state

    return lifespan


def gradio_temp_folders(blocks) -> list:
    """The folders Gradio writes the page's files to: ``GRADIO_TEMP_DIR`` (or Gradio's default, ``<tmp>/gradio``) as
    it is now and as each component saw it when it was built."""
    from gradio.utils import get_upload_folder

    folders = {Path(get_upload_folder())}
    folders |= {Path(b.GRADIO_CACHE) for b in blocks.blocks.values() if getattr(b, "GRADIO_CACHE", None)}
    return sorted(folders)


def private_gradio_temp(blocks) -> list:
    """Make Gradio's temporary folders (`gradio_temp_folders`) 0700, creating them (and missing parents) if need be,
    and take group and other access off what is already inside, so that no other user of the machine reaches what
    Gradio writes there (the face mode's releases) whatever the umask. Gradio itself creates the folder when it is
    imported, with the umask's mode. Returns the folders.

    Raises:
        ValueError: a folder belongs to another user (e.g. a shared ``/tmp/gradio`` someone else created first).
    """
    folders = gradio_temp_folders(blocks)
    for folder in folders:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = folder.stat().st_uid
        if hasattr(os, "getuid") and owner != os.getuid():
            raise ValueError(f"Gradio's temporary folder {folder} belongs to another user (uid {owner}), who could "
                             "read the Space's files there: set GRADIO_TEMP_DIR to a folder of your own")
        os.chmod(folder, 0o700)
        for path in folder.rglob("*"):
            try:
                mode = path.lstat().st_mode
                if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
                    os.chmod(path, stat.S_IMODE(mode) & ~0o077)
            except OSError:  # gone meanwhile, or not ours: out of reach behind the 0700 folder anyway
                continue
    return folders


@lru_cache(maxsize=1)
def _private_blocks_class():
    import gradio as gr

    class PrivateBlocks(gr.Blocks):
        """`gr.Blocks` that keeps what a person loads out of Gradio's own stores.

        - `launch` defaults to ``run_history=False`` (Gradio's run history would keep each request's inputs, the
          original face, in the browser's storage), ``max_file_size=0`` (Gradio's upload route, mounted on every
          app and used by `gradio_client`'s ``handle_file`` whatever the endpoint takes, answers 413 before it
          writes a byte: no component of the page takes a file) and ``enable_monitoring=False`` (``/monitoring``
          and its public ``/monitoring/summary`` would tell any client when other sessions release and how long each
          took); it removes the deep-link route (`_DROPPED_ROUTES`) before the server answers; and it makes Gradio's
          temporary folder 0700 (`private_gradio_temp`).
        - Gradio copies every input and output value into the session's page config
          (``SessionState.config_values``, kept until 10,000 newer sessions push it out, and what deep links are
          made of). The values of the components named in `keep_out_of_sessions` (the uploads, and the photo mode's
          answer, which holds the upload's pixels outside the faces) are set back to their initial value there as
          soon as Gradio has stored them, before the handler runs and again after the answer is built: the browser
          keeps its copy, the server none.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._kept_out: dict = {}

        def keep_out_of_sessions(self, *components) -> None:
            """Never keep the values of ``components`` in a session's stored page config."""
            for c in components:
                self._kept_out[c._id] = copy.deepcopy(c.value)

        def _forget(self, state) -> None:
            values = getattr(state, "config_values", None)
            if not values:
                return
            for key, initial in self._kept_out.items():
                config = values.get(key)
                if isinstance(config, dict) and isinstance(config.get("props"), dict):
                    config["props"]["value"] = copy.deepcopy(initial)

        def _private_inputs(self, block_fn) -> list:
            return [i for i, block in enumerate(getattr(block_fn, "inputs", None) or [])
                    if getattr(block, "_id", None) in self._kept_out]

        async def preprocess_data(self, block_fn, inputs, state, *args, **kwargs):
            try:
                return await super().preprocess_data(block_fn, inputs, state, *args, **kwargs)
            finally:
                self._forget(state)
                # the request's own list of values (the queued event's, which Gradio's queue may hold on to after
                # the answer): the handler gets the preprocessed copy
                for i in self._private_inputs(block_fn):
                    if isinstance(inputs, list) and i < len(inputs):
                        inputs[i] = copy.deepcopy(self._kept_out[block_fn.inputs[i]._id])

        async def call_function(self, block_fn, processed_input, iterator=None, requests=None, *args, **kwargs):
            if self._private_inputs(block_fn):  # the HTTP request's cached body (bytes and parsed JSON): parsed now
                for request in requests if isinstance(requests, list) else [requests]:
                    raw = getattr(request, "__dict__", {}).get("request")
                    for cached in ("_body", "_json", "_form"):
                        getattr(raw, "__dict__", {}).pop(cached, None)
            return await super().call_function(block_fn, processed_input, iterator, requests, *args, **kwargs)

        async def postprocess_data(self, block_fn, predictions, state, *args, **kwargs):
            try:
                return await super().postprocess_data(block_fn, predictions, state, *args, **kwargs)
            finally:
                self._forget(state)

        def launch(self, *args, **kwargs):
            kwargs.setdefault("run_history", False)
            kwargs.setdefault("footer_links", ["api", "gradio", "settings"])
            kwargs.setdefault("max_file_size", 0)
            kwargs.setdefault("enable_monitoring", False)
            app_kwargs = dict(kwargs.get("app_kwargs") or {})
            app_kwargs["lifespan"] = _without_routes(app_kwargs.get("lifespan"), _DROPPED_ROUTES)
            kwargs["app_kwargs"] = app_kwargs
            private_gradio_temp(self)
            return super().launch(*args, **kwargs)

    return PrivateBlocks


def _forget_session(demo):
    """An unload handler: drop the session's `gr.State` (its picture) as soon as its tab is closed or reloaded, instead
    of Gradio's hour after the close."""
    import gradio as gr

    def on_unload(request):
        holder = getattr(demo, "state_holder", None)
        if holder is not None and request is not None and request.session_hash:
            holder.delete_state(request.session_hash)

    on_unload.__annotations__ = {"request": gr.Request}  # a class, not a string: Gradio passes the request by its type
    return on_unload


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
    banner = domain_banner(space)
    if banner is not None:
        gr.HTML(value=banner, css_template=_BANNER_CSS, elem_id="dp-domain-banner")
    every, age = CACHE_DELETION
    gr.Markdown(_PRIVACY_NOTE.format(side=PHOTO_SIDE, face_side=FACE_SIDE, ttl=f"{SESSION_TTL_S / 3600:g}",
                                     cache_min=age // 60, cache_max=(age + every) // 60,
                                     mb=MAX_UPLOAD_BYTES // (1024 * 1024), mp=MAX_UPLOAD_PIXELS / 1e6,
                                     min_side=MIN_UPLOAD_SIDE, hub=hub_note), elem_id="dp-privacy-note")
    gr.Markdown(_FACE_NOTE.format(budget=config.budget_epsilon), elem_id="dp-face-note")


def _photo_mode(space: DPSpace, attributes, release: dict) -> tuple:
    """A photo of any size: every face detected, protected on its own budget and pasted back (`photo.py`). Returns
    ``(photo_in, photo_out)``."""
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
                    "inside the answer. Neither is written to a file on the server, and the server keeps neither "
                    "once it has answered.", elem_id="dp-photo-note")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                photo_in = upload_component("dp-photo-in", title="Photo (stays in your browser and this request)",
                                            pick="Upload a photo…", empty="no photo loaded", alt="photo",
                                            fit="contain", box=320, label="photo")
            with gr.Column(scale=2, min_width=300):
                photo_out = gr.HTML(value={}, html_template=_PHOTO_OUT_TEMPLATE, css_template=_PHOTO_OUT_CSS,
                                    js_on_load=None, elem_id="dp-photo-out", label="protected_photo",
                                    show_label=False)
        with gr.Row():
            photo_eps = gr.Number(value=space.config.start_epsilon, label="ε of each face",
                                  minimum=space.config.min_epsilon, maximum=space.config.max_epsilon,
                                  elem_id="dp-photo-epsilon")
            photo_btn = gr.Button("Protect the faces", variant="primary", elem_id="dp-photo-protect")
        photo_status = gr.Markdown(elem_id="dp-photo-status", label="status", show_label=False)
    photo_btn.click(gpu_task(on_photo), [photo_in, attributes, photo_eps], [photo_out, photo_status],
                    api_name="protect_photo", **{k: v for k, v in release.items() if k != "show_progress_on"})
    return photo_in, photo_out


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
                                 delete_cache=CACHE_DELETION) as demo:
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
                # before the session's first release there is no figure to show: a dash, not the Numbers' 0
                no_figures = gr.Markdown("ε of this image: –\n\nε spent by this session: –",
                                         elem_id="dp-no-figures")
                with gr.Column(visible=False, elem_id="dp-figure-boxes") as figure_boxes:
                    epsilon_box = gr.Number(label="ε of this image", interactive=False, elem_id="dp-epsilon",
                                            precision=None)
                    spent_box = gr.Number(label="ε spent by this session", interactive=False,
                                          elem_id="dp-session-spent")
                # judging needs an image to judge: enabled after a release, until it is accepted (`page_controls`)
                with gr.Row():
                    more_privacy_btn = gr.Button("More privacy", elem_id="dp-more-privacy", variant="secondary",
                                                 interactive=False)
                    more_detail_btn = gr.Button("More detail", elem_id="dp-more-detail", variant="secondary",
                                                interactive=False)
                accept_btn = gr.Button("Accept", elem_id="dp-accept", variant="primary", interactive=False)
        status = gr.Markdown("Load a face, choose what to protect, and press **Protect**.", elem_id="dp-status",
                             label="status", show_label=False)
        with gr.Row():
            with gr.Column(scale=1):
                attributes = gr.CheckboxGroup(list(space.attribute_names), value=space.default_attributes,
                                              label="Protected attributes", elem_id="dp-attributes")
                start_eps = gr.Number(value=config.start_epsilon, label="starting ε", minimum=config.min_epsilon,
                                      maximum=config.max_epsilon, elem_id="dp-start-epsilon")
                protect_btn = gr.Button("Protect", variant="primary", elem_id="dp-protect")
                # how the budget is shared: a slider for each ticked attribute only (`shown_weights`)
                shown = shown_weights(space.attribute_names, space.default_attributes)
                weight_sliders = [gr.Slider(0.1, 10.0, value=1.0, step=0.1, label=f"weight: {a}", visible=v,
                                            elem_id=f"dp-weight-{a}") for a, v in zip(space.attribute_names, shown)]
            with gr.Column(scale=2):
                figures = gr.Markdown(elem_id="dp-figures", label="figures", show_label=False)
                report = gr.Markdown(elem_id="dp-report", label="report", show_label=False)

        outs = [protected, epsilon_box, spent_box, figures, status, report, session_state]
        release = dict(concurrency_limit=config.max_concurrent_releases, concurrency_id="release",
                       show_progress="full", show_progress_on=[protected])

        def on_controls(session):
            offered = page_controls(session)
            return (gr.Column(visible=offered["figures"]), gr.Markdown(visible=not offered["figures"]),
                    *(gr.Button(interactive=offered["judge"]) for _ in range(3)))

        def on_attributes(ticked):
            return [gr.Slider(visible=v) for v in shown_weights(space.attribute_names, ticked)]

        # the page's own state (which figures and buttons it offers) follows each answer; not part of the API
        controls = dict(fn=on_controls, inputs=[session_state],
                        outputs=[figure_boxes, no_figures, more_privacy_btn, more_detail_btn, accept_btn],
                        api_visibility="private", queue=False)
        protect_btn.click(on_protect, [original, attributes, start_eps, session_state, *weight_sliders], outs,
                          api_name="protect", **release).then(**controls)
        more_privacy_btn.click(on_more_privacy, [session_state], outs, api_name="more_privacy",
                               **release).then(**controls)
        more_detail_btn.click(on_more_detail, [session_state], outs, api_name="more_detail",
                              **release).then(**controls)
        accept_btn.click(on_accept, [session_state], outs, api_name="accept", concurrency_limit=None).then(**controls)
        attributes.change(on_attributes, [attributes], weight_sliders, api_visibility="private", queue=False)
        sample_btn.click(on_sample, [sample_index], [original], api_name="sample", concurrency_limit=None)
        photo_in, photo_out = _photo_mode(space, attributes, release)
        # the uploads, and the photo mode's answer (the upload's pixels outside the faces): never kept by Gradio
        demo.keep_out_of_sessions(original, photo_in, photo_out)
        demo.unload(_forget_session(demo))
    demo.queue(max_size=64)
    return demo
