"""Screenshots and in-browser timings of the running dashboard via headless Chromium (Chrome DevTools Protocol).

Needs Debian's chromium (apt-get install chromium). With a server on port 8501:
    python tools/screenshot.py http://localhost:8501/ docs/screenshots/assess.png \
        --upload $PWD/../shared/data/samples-fullres/1377.png --chrono
    python tools/screenshot.py http://localhost:8501/performance docs/screenshots/performance.png --height 2400
Prints the time to first render and, with --upload, from upload to a visible result with Grad-CAM.
--chrono sets the chronological age to 15 y (five clicks from the default 10 y) to show the clinical read-out.
"""
import asyncio, base64, json, subprocess, sys, time, urllib.request, argparse
from websockets.asyncio.client import connect

ap = argparse.ArgumentParser()
ap.add_argument("url"); ap.add_argument("out")
ap.add_argument("--upload"); ap.add_argument("--wait-text", default="")
ap.add_argument("--height", type=int, default=1800); ap.add_argument("--chrono", action="store_true")
ap.add_argument("--timeout", type=float, default=120)
args = ap.parse_args()

chrome = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=9333",
                           f"--window-size=1400,{args.height}", "--hide-scrollbars", "about:blank"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            targets = json.load(urllib.request.urlopen("http://127.0.0.1:9333/json/list"))
            ws_url = [t for t in targets if t["type"] == "page"][0]["webSocketDebuggerUrl"]; break
        except Exception: time.sleep(0.2)

    async def main():
        ws = await connect(ws_url, max_size=200 * 1024 * 1024)
        counter = 0
        async def call(method, **params):
            nonlocal counter
            counter += 1; my = counter
            await ws.send(json.dumps({"id": my, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == my:
                    if "error" in msg: raise RuntimeError(msg["error"])
                    return msg["result"]
        async def js(expr):
            r = await call("Runtime.evaluate", expression=expr, returnByValue=True)
            return r["result"].get("value")
        async def wait_for(expr, what):
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                if await js(expr): return time.monotonic()
                await asyncio.sleep(0.2)
            raise TimeoutError(what)
        await call("Emulation.setDeviceMetricsOverride", width=1400, height=args.height, deviceScaleFactor=1, mobile=False)
        t0 = time.monotonic()
        await call("Page.navigate", url=args.url)
        t1 = await wait_for("!!document.querySelector('h1')", "first render (h1)")
        print(f"first render (h1 visible) {t1 - t0:.2f} s after navigate")
        if args.upload:
            await wait_for("!!document.querySelector('input[type=file]')", "file input")
            doc = await call("DOM.getDocument", depth=-1, pierce=True)
            node = await call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="input[type=file]")
            t2 = time.monotonic()
            await call("DOM.setFileInputFiles", files=[args.upload], nodeId=node["nodeId"])
            await wait_for("document.body.innerText.includes('Predicted bone age') && document.body.innerText.includes('Grad-CAM of the')", "result")
            t3 = time.monotonic()
            print(f"upload -> result with Grad-CAM visible {t3 - t2:.2f} s")
            if args.chrono:
                await js("[...document.querySelectorAll('label')].find(l => l.innerText.trim() === 'Years and months').click()")
                await wait_for("document.querySelectorAll('input[type=number]').length >= 2", "number inputs")
                for _ in range(5):
                    await js("document.querySelectorAll('button[data-testid=stNumberInputStepUp]')[0].click()")
                    await asyncio.sleep(1.5)
                    await wait_for("!document.querySelector('[data-testid=stStatusWidget]')", "rerun finished")
                await wait_for("document.body.innerText.includes('Category:')", "clinical read-out")
        if args.wait_text:
            await wait_for(f"document.body.innerText.includes({json.dumps(args.wait_text)})", args.wait_text)
        await asyncio.sleep(3)  # let charts and images settle
        await wait_for("!document.querySelector('[data-testid=stStatusWidget]')", "run finished")
        await js("window.scrollTo(0, 0)")
        shot = await call("Page.captureScreenshot", format="png")
        open(args.out, "wb").write(base64.b64decode(shot["data"]))
        print("saved", args.out)
    asyncio.run(main())
finally:
    chrome.terminate(); chrome.wait()
