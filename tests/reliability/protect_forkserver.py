"""Run ``protect_dataset`` in real child processes that a test can SIGKILL at any moment.

Usage: ``python protect_forkserver.py MODEL_DIR`` then JSON lines on stdin. Importing torch, diffusers and datasets
takes many seconds, so this server imports them and loads the pipeline once, then forks one child per run (a real
process with its own pid, killed by a real SIGKILL, exactly like a killed ``dpdiffusion protect``):

    {"run": {...ProtectConfig fields...}}   fork a child running protect_dataset; answers {"pid": PID}
    {"run": {...}, "die": [WHERE, N]}       the same, but the child SIGKILLs itself at a chosen point (fault
                                            injection): WHERE is "before_rename" (a temporary image is written, not
                                            renamed), "after_rename" (an image is in place, its record not written)
                                            or "mid_record" (a batch's records written but the last one cut short); N counts the calls
    {"wait": PID}                           reap it; answers {"pid", "exit", "signal", "wall_s"}
    {"quit": true}

The child is only reaped on "wait", so its pid cannot be reused by another process while the test may still
signal it. Torch runs single-threaded (forking after a thread pool was started is unsafe), in the server and the
children alike, so every run computes the same bits.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _inject_death(where: str, nth: int) -> None:
    """Make this process SIGKILL itself at the ``nth`` rename of an image or write of records."""
    import signal

    import dpdiffusion.protect as protect

    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] == nth

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if where in ("before_rename", "after_rename"):
        real_replace = os.replace

        def replace(src, dst):
            is_image = os.path.basename(os.path.dirname(os.fspath(dst))) == "images"
            if is_image and where == "before_rename" and due():
                die()
            real_replace(src, dst)
            if is_image and where == "after_rename" and due():
                die()

        protect.os.replace = replace  # protect's `os` is this module's `os`: only this child is affected
    elif where == "mid_record":
        real_open = protect._open_append

        class HalfWriter:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                if b'"file_name"' in data and due():
                    self._f.write(data[: len(data) - 5])  # cut inside the last record
                    self._f.flush()
                    die()
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

        protect._open_append = lambda path: HalfWriter(real_open(path))
    else:
        raise ValueError(f"unknown injection point {where!r}")


def main() -> None:
    model_dir = sys.argv[1]
    import torch

    torch.set_num_threads(1)
    import datasets  # noqa: F401 - imported once here, not in every child
    import warnings

    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.protect import ProtectConfig, protect_dataset

    warnings.filterwarnings("ignore")
    pipe = DPDiffusionPipeline.from_pretrained(model_dir, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    started = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if "run" in msg:
            config = ProtectConfig(**msg["run"])
            pid = os.fork()
            if pid == 0:  # the child: one protect run, then exit without running the server's cleanup
                if msg.get("die"):
                    _inject_death(*msg["die"])
                code = 0
                try:
                    protect_dataset(pipe, config, progress=False)
                except BaseException:  # noqa: BLE001 - report and exit non-zero
                    traceback.print_exc()
                    code = 1
                finally:
                    sys.stderr.flush()
                    os._exit(code)
            started[pid] = time.monotonic()
            print(json.dumps({"pid": pid}), flush=True)
        elif "wait" in msg:
            pid = int(msg["wait"])
            _, status = os.waitpid(pid, 0)
            print(json.dumps({
                "pid": pid,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "wall_s": time.monotonic() - started.pop(pid),
            }), flush=True)
        elif msg.get("quit"):
            break


if __name__ == "__main__":
    main()
