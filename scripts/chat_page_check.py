#!/usr/bin/env python3
"""Drives the chat page (/chat) in headless Chromium over the DevTools protocol (a pipe, so no
websocket library is needed): loads the page with ?message=..., waits for the streamed reply to
finish, reads the reply, its timings line and its experts line, and saves a screenshot.

    python3 scripts/chat_page_check.py http://127.0.0.1:8080 /tmp/chat.png

Prints one JSON object: {"reply": ..., "meta": ..., "experts": ..., "state": ..., "screenshot_bytes": N,
"width": W, "height": H}. Exits 2 when chromium is not installed, 1 on failure.
"""
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.parse


def main():
    base, shot = sys.argv[1].rstrip("/"), sys.argv[2]
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        print("chromium is not installed", file=sys.stderr)
        sys.exit(2)
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    os.set_inheritable(to_browser_r, True)  # dup2(3, 3) would keep close-on-exec otherwise
    os.set_inheritable(from_browser_w, True)
    # Chromium reads commands on fd 3 and writes replies on fd 4 (dup2'd fds are inheritable; the
    # child keeps its fds open, as pass_fds would close 3 and 4 after this runs).
    def child_fds():
        os.dup2(to_browser_r, 3)
        os.dup2(from_browser_w, 4)
    proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                             "--window-size=1000,700", "--no-first-run", "about:blank"],
                            close_fds=False, preexec_fn=child_fds,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_browser_r)
    os.close(from_browser_w)
    out = os.fdopen(to_browser_w, "wb", buffering=0)
    inp = os.fdopen(from_browser_r, "rb", buffering=0)
    buffer = b""
    next_id = [0]

    def call(method, params=None, session=None):
        nonlocal buffer
        next_id[0] += 1
        message = {"id": next_id[0], "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        out.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in buffer:
                chunk = inp.read(65536)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                buffer += chunk
            raw, buffer = buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == next_id[0]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    try:
        url = base + "/chat?" + urllib.parse.urlencode({"message": "def fibonacci(n):", "temperature": "0"})
        target = call("Target.createTarget", {"url": url})["targetId"]
        session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        state = None
        deadline = time.time() + 90
        probe = ("(() => { const r = document.querySelector('.msg.assistant'); if (!r) return null;"
                 " const m = r.querySelector('.meta'), e = r.querySelector('.experts');"
                 " return {state: r.dataset.state, reply: r.firstChild ? r.firstChild.textContent : '',"
                 " meta: m ? m.textContent : '', experts: e ? e.textContent : ''}; })()")
        while time.time() < deadline:
            value = call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session)["result"].get("value")
            if value and value["state"] in ("done", "error"):
                state = value
                break
            time.sleep(0.2)
        if state is None:
            raise RuntimeError("the reply did not finish within 90 s")
        png = base64.b64decode(call("Page.captureScreenshot", {"format": "png"}, session)["data"])
        with open(shot, "wb") as f:
            f.write(png)
        width, height = struct.unpack(">II", png[16:24])
        state.update({"screenshot_bytes": len(png), "width": width, "height": height})
        print(json.dumps(state))
    finally:
        try:
            call("Browser.close")
        except Exception:
            pass
        proc.wait(timeout=10)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"chat page check failed: {e}", file=sys.stderr)
        sys.exit(1)
