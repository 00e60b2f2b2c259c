"""The operator dashboard at `/`: its files and JSON endpoints (in process), then the page itself in
headless Chromium against a real `iumad serve` (embedded Redis + worker, tiny model, auth on).

The browser tests use Debian's `chromium` through Playwright's Python package (never a downloaded
browser); without `/usr/bin/chromium` they skip. They run in file order, sharing one gateway and one
browser page: enrol through the form, see inspections in Live, set a threshold, enrol a second object
and roll back. Screenshots of each view go to `test-output/dashboard/`.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_processes import http_ready, part_files, start_gateway, stop_process, tail, tiny_env, wait_until
from service_support import build_version, files_for, part, service_settings, wait_ready

from model.data.decode import read_depth, read_rgb
from model.data.synthetic import write_synthetic_dataset
from service.app import create_app
from service.recent import THUMBNAIL_SIZE, RecentInspections
from service.routes.dashboard import STATIC_DIR
from workers.forgetting_guard import paste_defect

CAMERA, OPERATOR = "camera-key-dashboard-01", "operator-key-dashboard-01"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "dashboard"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def key(value: str | None) -> dict[str, str]:
    return {"X-API-Key": value} if value else {}


# ----------------------------------------------------------------------------------- in process, fast


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("dashboard-data")
    build_version(data_dir / "models")
    settings = service_settings(data_dir, inspect_api_keys=[CAMERA], operator_api_keys=[OPERATOR])
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_the_page_and_its_files_are_served_without_a_key(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/main.js"></script>' in page.text

    referenced = set(re.findall(r'(?:href|src)="/static/([^"]+)"', page.text))
    for module in STATIC_DIR.glob("*.js"):
        referenced |= set(re.findall(r'from "\./([^"]+)"', module.read_text()))
    shipped = {path.name for path in STATIC_DIR.iterdir() if path.suffix != ".html"}
    assert referenced <= shipped, referenced - shipped
    assert {"api.js", "live.js", "objects.js", "enrol.js", "models.js", "main.js", "style.css"} <= referenced
    for name in sorted(shipped):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] == MEDIA_TYPES[Path(name).suffix], name
        assert response.headers["x-content-type-options"] == "nosniff"
        body = response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://", body), f"{name} refers to another server"


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/..%2fapp.py", "/static/.hidden.js", "/static/index.html"]
)
def test_only_the_dashboard_files_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, path
    assert response.json()["error"]["code"] == "not_found"


def _inspect(client: TestClient, rgb: np.ndarray, depth: np.ndarray | None, **fields: str) -> dict[str, Any]:
    response = client.post("/inspect", files=files_for(rgb, depth), data=fields, headers=key(CAMERA))
    assert response.status_code == 200, response.text
    return response.json()


def _recent_with_pictures(client: TestClient, count: int, **query: str) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        items = client.get("/dashboard/recent", params=query, headers=key(CAMERA)).json()["inspections"]
        return items if len(items) >= count and all(item["pictures"] for item in items) else None

    return wait_until(ready, 10, 0.05, "the dashboard pictures")  # type: ignore[return-value]


def test_recent_inspections_with_thumbnails_heat_map_and_outline(client: TestClient) -> None:
    rgb, depth = part("alpha", 71)
    passed = _inspect(client, rgb, depth, object="alpha", threshold="1e6")
    defect_rgb, defect_depth = part("alpha", 72, defect=True)
    failed = _inspect(client, defect_rgb, defect_depth, object="alpha", threshold="-1e6")
    assert not passed["is_anomalous"] and failed["is_anomalous"]

    items = _recent_with_pictures(client, 2, object="alpha")
    newest, older = items[0], items[1]
    assert newest["request_id"] == failed["request_id"] and older["request_id"] == passed["request_id"]
    assert newest["decision"] == "fail" and older["decision"] == "pass"
    for name in ("score", "raw_score", "threshold", "model_version", "object", "defect_area_fraction"):
        assert newest[name] == failed[name], name
    assert newest["image_size"] == [rgb.shape[0], rgb.shape[1]]
    assert newest["pictures"]["outline"] and not older["pictures"]["outline"]

    for item in (newest, older):
        for kind, mode in (("rgb", "RGB"), ("heatmap", "RGBA")):
            response = client.get(f"/dashboard/recent/{item['id']}/{kind}.png", headers=key(CAMERA))
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            image = Image.open(io.BytesIO(response.content))
            assert image.mode == mode
            assert image.size == (item["pictures"]["width"], item["pictures"]["height"])
            assert max(image.size) <= THUMBNAIL_SIZE
    outline = client.get(f"/dashboard/recent/{newest['id']}/outline.png", headers=key(CAMERA))
    assert outline.status_code == 200 and np.array(Image.open(io.BytesIO(outline.content)))[..., 3].any()
    assert client.get(f"/dashboard/recent/{older['id']}/outline.png", headers=key(CAMERA)).status_code == 404
    # the heat map is clear where the part is normal (threshold far above) and red where it is not
    heat_pass = np.array(
        Image.open(
            io.BytesIO(
                client.get(f"/dashboard/recent/{older['id']}/heatmap.png", headers=key(CAMERA)).content
            )
        )
    )
    heat_fail = np.array(
        Image.open(
            io.BytesIO(
                client.get(f"/dashboard/recent/{newest['id']}/heatmap.png", headers=key(CAMERA)).content
            )
        )
    )
    assert heat_pass[..., 3].max() == 0 and heat_fail[..., 3].min() > 0

    assert [i["id"] for i in _recent_with_pictures(client, 1, decision="fail")][0] == newest["id"]
    assert all(i["decision"] == "pass" for i in _recent_with_pictures(client, 1, decision="pass"))
    body = client.get("/dashboard/recent", headers=key(CAMERA)).json()
    assert body["counters"]["alpha"]["inspected"] >= 2 and body["counters"]["alpha"]["rejected"] >= 1
    scores = client.get("/dashboard/scores", params={"object": "alpha"}, headers=key(CAMERA)).json()
    assert scores["objects"]["alpha"]["raw_scores"][-2:] == [passed["raw_score"], failed["raw_score"]]
    assert scores["objects"]["alpha"]["rejected"][-2:] == [False, True]


@pytest.mark.parametrize(
    "path",
    ["/dashboard/recent", "/dashboard/scores", "/dashboard/recent/abcdef-1/rgb.png"],
)
def test_dashboard_endpoints_need_an_inspect_key(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers=key("wrong")).status_code == 401
    for role in (CAMERA, OPERATOR):
        assert client.get(path, headers=key(role)).status_code in (200, 404)  # 404: no such picture


@pytest.mark.parametrize("query", ["decision=maybe", "object=Not%20A%20Name", "limit=0", "limit=100000"])
def test_dashboard_query_validation(client: TestClient, query: str) -> None:
    response = client.get("/dashboard/recent?" + query, headers=key(CAMERA))
    assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"


class _Pool:
    """An executor that runs submitted work only when told (to see what waits)."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def submit(self, job: Any) -> None:
        self.jobs.append(job)

    def run_all(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job()


def _fake(object_name: str, raw: float, anomalous: bool, request_id: str) -> tuple[Any, Any]:
    record = SimpleNamespace(calibration={"score_median": 0.0, "score_max": 1.0})
    result = SimpleNamespace(
        model=SimpleNamespace(object=lambda name: record),
        prediction=SimpleNamespace(anomaly_map=np.linspace(-1, 3, 64 * 64, dtype=np.float32).reshape(64, 64)),
    )
    response = SimpleNamespace(
        request_id=request_id,
        object=object_name,
        object_source="given",
        is_anomalous=anomalous,
        score=0.5,
        raw_score=raw,
        threshold=1.0,
        threshold_source="calibrated",
        defect_area_fraction=0.1,
        model_version="v1",
        modalities=["rgb"],
        warnings=[],
    )
    return result, response


def test_the_ring_is_bounded_and_never_queues_more_than_a_few_pictures() -> None:
    recent = RecentInspections(capacity=3, scores_per_object=4, max_objects=2, max_pending=2)
    pool = _Pool()
    rgb = np.zeros((600, 300, 3), np.uint8)

    def capture(index: int) -> None:
        result, response = _fake("a", float(index), index % 2 == 1, f"r{index}")
        recent.capture(pool, rgb, result, response)  # type: ignore[arg-type]

    for index in range(3):
        capture(index)
    assert len(pool.jobs) == 2 and recent.skipped_pictures == 1  # a burst: the third gets no pictures
    assert [item["pictures_pending"] for item in recent.recent()] == [False, True, True]
    pool.run_all()
    for index in (3, 4):
        capture(index)
    pool.run_all()
    items = recent.recent()
    assert [item["request_id"] for item in items] == ["r4", "r3", "r2"]  # the newest 3, newest first
    assert [item["pictures"] is not None for item in items] == [True, True, False]
    assert not any(item["pictures_pending"] for item in items)
    assert items[0]["pictures"] == {"width": THUMBNAIL_SIZE // 2, "height": THUMBNAIL_SIZE, "outline": False}
    assert items[1]["pictures"]["outline"]  # r3 was rejected
    assert recent.picture(items[0]["id"], "rgb") and recent.picture(items[2]["id"], "rgb") is None
    assert recent.counters()["a"] == {"inspected": 5, "rejected": 2, "reject_rate": 0.4}
    assert recent.scores()["a"]["raw_scores"] == [1.0, 2.0, 3.0, 4.0]  # the last 4
    for name in ("b", "c"):
        result, response = _fake(name, 0.0, False, name)
        recent.capture(pool, rgb, result, response)  # type: ignore[arg-type]
    assert set(recent.counters()) == {"b", "c"}  # at most 2 objects: the oldest is forgotten

    class _Closed:
        def submit(self, job: Any) -> None:
            raise RuntimeError("cannot schedule new futures after shutdown")

    recent.capture(_Closed(), rgb, *_fake("c", 0.0, False, "late"))  # type: ignore[arg-type]
    latest = recent.recent(limit=1)[0]
    assert latest["request_id"] == "late" and not latest["pictures_pending"] and latest["pictures"] is None


def test_pictures_are_encoded_only_when_asked_for_and_then_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inspection pays for a thumbnail-size snapshot only; the PNGs are made on the first view."""
    import service.recent as recent_module

    rendered: list[Any] = []
    real_render = recent_module.render_pictures

    def counting_render(snapshot: Any) -> Any:
        rendered.append(snapshot)
        return real_render(snapshot)

    monkeypatch.setattr(recent_module, "render_pictures", counting_render)
    recent = RecentInspections(capacity=4)
    pool = _Pool()
    rgb = np.full((900, 600, 3), 77, np.uint8)
    for index in range(3):
        recent.capture(pool, rgb, *_fake("a", float(index), index == 2, f"r{index}"))  # type: ignore[arg-type]
    pool.run_all()
    items = recent.recent()
    assert rendered == [] and all(item["pictures"] for item in items)  # listed, not yet encoded
    assert items[0]["pictures"] == {"width": 171, "height": THUMBNAIL_SIZE, "outline": True}

    heatmap = recent.picture(items[0]["id"], "heatmap")
    assert heatmap is not None and len(rendered) == 1
    assert recent.picture(items[0]["id"], "rgb") is not None and recent.picture(items[0]["id"], "outline")
    assert recent.picture(items[0]["id"], "heatmap") is heatmap and len(rendered) == 1  # kept
    thumbnail = Image.open(io.BytesIO(recent.picture(items[0]["id"], "rgb") or b""))
    assert thumbnail.size == (171, THUMBNAIL_SIZE) and thumbnail.getpixel((80, 120)) == (77, 77, 77)
    assert recent.picture(items[1]["id"], "outline") is None  # a passing part has no outline
    assert len(rendered) == 2


# ------------------------------------------------------------------- in the browser, real processes


@dataclass
class Browser:
    url: str
    base: Path
    synthetic: Path
    page: Any
    context: Any
    browser: Any
    errors: list[str] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)
    versions: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**key(OPERATOR), **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def tab(self, name: str) -> None:
        if self.page.url == "about:blank":  # a test run on its own
            self.page.goto(self.url + "/")
        self.page.click(f"#tab-{name}")
        self.page.wait_for_selector(f"#view-{name}:not([hidden])")


def wait_js(page: Any, expression: str, timeout_s: float = 15.0) -> None:
    """Wait until a JavaScript expression is truthy. (Playwright's `wait_for_function` evaluates its
    predicate with `eval`, which the page's Content-Security-Policy rightly forbids.)"""
    wait_until(lambda: page.evaluate(expression), timeout_s, 0.1, expression)


def use_key(page: Any, value: str) -> None:
    """Enter a key in the header, as an operator does; waits for the Objects view to reload with it
    (a reload replaces every object card: the cards seen before are marked, and must be gone)."""
    had_cards = page.evaluate(
        "(() => { const cards = document.querySelectorAll('#objects-list .object-card');"
        " cards.forEach((card) => card.setAttribute('data-seen-by-test', '')); return cards.length > 0; })()"
    )
    page.fill("#api-key", value)
    page.click("#key-save")
    if page.is_visible("#view-objects"):
        if had_cards:
            wait_js(page, "!document.querySelector('#objects-list [data-seen-by-test]')")
        else:
            wait_js(page, "document.querySelector('#objects-list .object-card') !== null")


def _watch_console(page: Any, session: Browser) -> None:
    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        text = message.text
        status = re.search(r"status of (\d{3})", text)
        if text.startswith("Failed to load resource") and status:
            code = int(status.group(1))
            url = (message.location or {}).get("url", "")
            if code in session.allowed_statuses or (code == 503 and url.endswith("/readyz")):
                return  # an API answer the page shows to the operator (auth phase; a model loading)
        session.errors.append(f"console: {text} at {message.location}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: session.errors.append(f"pageerror: {error}"))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install it with `apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    base = tmp_path_factory.mktemp("dashboard")
    synthetic = base / "synthetic"
    write_synthetic_dataset(synthetic, objects=2, size=128, n_train=12, n_validation=4, n_test=3, seed=3)
    env = tiny_env(
        base / "data",
        None,
        IUMAD_INSPECT_API_KEYS=f'["{CAMERA}"]',
        IUMAD_OPERATOR_API_KEYS=f'["{OPERATOR}"]',
        # An AUROC drop is never below -1: every incremental step goes to review, so the page's review
        # (the guard's numbers, Activate, Discard) is seen every time, not only when the tiny model forgets.
        IUMAD_FORGETTING_MARGIN="-1",
        IUMAD_KEEP_REJECTED_IMAGES="true",  # a rejected part's card can be marked good at once
    )
    gateway, url = start_gateway(env, base / "gateway.log")
    playwright = sync_api.sync_playwright().start()
    browser = None
    try:
        wait_until(lambda: http_ready(url) or gateway.poll() is not None, 120, 0.3, "the gateway")
        assert gateway.poll() is None, tail(base / "gateway.log")
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15_000)
        session = Browser(url, base, synthetic, page, context, browser)
        _watch_console(page, session)
        yield session
    finally:
        if browser is not None:
            browser.close()
        playwright.stop()
        stop_process(gateway)
        print(tail(base / "gateway.log", 30))


def _sample_files(synthetic: Path, name: str) -> list[Path]:
    """The training split's pairs as loose files (000.png + 000.tiff, ...), as an operator picks them."""
    folder = synthetic / name / "train" / "good"
    return sorted([*(folder / "rgb").glob("*.png"), *(folder / "xyz").glob("*.tiff")])


def _archive(synthetic: Path, name: str, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as bundle:
        for split in ("train", "validation"):
            for path in sorted((synthetic / name / split / "good").rglob("*")):
                if path.is_file():
                    bundle.write(path, f"{name}/{path.relative_to(synthetic / name)}")
    return target


def _wait_for_job_end(session: Browser, timeout_s: float = 150) -> tuple[str, list[float]]:
    """Poll the job panel as an operator would watch it; returns its final status and progress seen."""
    page = session.page
    seen: list[float] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = page.get_attribute("#job-panel", "data-status") or ""
        if page.locator("#job-progress").count():
            seen.append(float(page.get_attribute("#job-progress", "value") or 0))
        if status and status not in ("queued", "running"):
            return status, seen
        time.sleep(0.25)
    raise AssertionError(
        f"the job did not end: {page.inner_text('#job-view')}\n{tail(session.base / 'gateway.log')}"
    )


@pytest.mark.slow
def test_operator_actions_fail_without_the_operator_key(session: Browser) -> None:
    page = session.page
    session.allowed_statuses = {401, 403}
    page.goto(session.url + "/#live")
    page.wait_for_selector("#live-error:not([hidden])")
    assert "401" in page.inner_text("#live-error") and "API key" in page.inner_text("#live-error")
    wait_js(page, "document.querySelector('#auth-state').textContent.startsWith('on')")  # from /readyz

    session.tab("enrol")
    page.fill("#enrol-object", "disc")
    page.set_input_files("#enrol-files", [str(p) for p in _sample_files(session.synthetic, "disc")])
    page.click("#enrol-submit")
    page.wait_for_selector("#enrol-error:not([hidden])")
    assert "401 unauthorized" in page.inner_text("#enrol-error")

    page.fill("#api-key", CAMERA)  # a camera key may look, but not enrol
    page.click("#key-save")
    page.click("#enrol-submit")
    wait_js(page, "document.querySelector('#enrol-error').textContent.includes('403')")
    assert "operator" in page.inner_text("#enrol-error")
    session.screenshot("enrol-forbidden")
    assert session.api("GET", "/jobs").json()["jobs"] == []  # nothing was accepted
    session.allowed_statuses = set()


@pytest.mark.slow
def test_enrol_through_the_form_and_watch_the_job(session: Browser) -> None:
    page = session.page
    session.tab("enrol")
    page.fill("#api-key", OPERATOR)
    page.click("#key-save")
    assert page.inner_text("#key-state") == "key set for this browser session"
    assert page.evaluate("sessionStorage.getItem('iumad-api-key')") == OPERATOR
    page.fill("#enrol-object", "Not A Name")
    page.click("#enrol-submit")
    wait_js(page, "document.querySelector('#enrol-error').textContent.startsWith('Object name')")
    page.fill("#enrol-object", "disc")
    page.set_input_files("#enrol-files", [str(p) for p in _sample_files(session.synthetic, "disc")])
    page.click("#enrol-form details summary")
    page.fill("#enrol-holdout", "0.25")  # 3 holdout parts calibrate a threshold with some spread
    page.click("#enrol-submit")
    page.wait_for_selector("#job-panel:not([hidden])")
    page.wait_for_selector("#job-progress")
    assert page.get_attribute("#enrol-upload-progress", "value") == "1"
    status, seen = _wait_for_job_end(session)
    assert status == "succeeded", page.inner_text("#job-view")
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(set(seen)) >= 2, seen
    assert page.inner_text("#job-percent") == "100 %"
    assert "enrolled" in page.inner_text("#job-view")
    page.click("#job-view details.log summary")
    page.wait_for_selector("#jobs-table tbody tr[data-job-id]")
    version = session.api("GET", "/models").json()["active"]
    session.versions.append(version)
    wait_until(
        lambda: page.get_attribute("#serving-version", "data-version") == version, 20, 0.2, "the header"
    )
    session.screenshot("enrol")


@pytest.mark.slow
def test_inspections_appear_in_live_with_their_overlay(session: Browser) -> None:
    page = session.page
    folder = session.synthetic / "disc" / "test" / "good"
    rgb = read_rgb(folder / "rgb" / "000.png")
    depth = read_depth(folder / "xyz" / "000.tiff")
    defect = paste_defect(rgb, depth, "colour_dent", np.random.default_rng(5))
    answers = []
    for part_rgb, part_depth, fields in (
        (rgb, depth, {}),
        (defect.rgb, defect.depth, {}),
        (rgb, depth, {}),
    ):
        response = session.api(
            "POST",
            "/inspect",
            data={"object": "disc", **fields},
            files=part_files(part_rgb, part_depth),
            headers=key(CAMERA),
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    if not answers[1]["is_anomalous"]:  # the tiny model missed it: ask below its score, so one is rejected
        raw = answers[1]["raw_score"]
        response = session.api(
            "POST",
            "/inspect",
            data={"object": "disc", "threshold": str(raw - 0.2 * (abs(raw) + 1))},
            files=part_files(defect.rgb, defect.depth),
            headers=key(CAMERA),
        )
        answers.append(response.json())
    assert any(answer["is_anomalous"] for answer in answers)

    session.tab("live")
    wait_js(page, f"document.querySelectorAll('#live-list .inspection').length >= {len(answers)}")
    newest = page.locator("#live-list .inspection").first
    assert newest.get_attribute("data-entry-id")
    rejected = page.locator("#live-list .inspection.fail").first
    assert rejected.locator(".badge").inner_text() == "REJECT"
    for kind in ("rgb", "heatmap", "outline"):
        image = rejected.locator(f"img.layer.{kind}")
        wait_until(lambda image=image: image.evaluate("i => i.complete && i.naturalWidth > 0"), 10, 0.1, kind)
    passed = page.locator("#live-list .inspection.pass")
    if passed.count():
        assert passed.first.locator(".badge").inner_text() == "PASS"
        assert passed.first.locator("img.layer.outline").count() == 0
    counters = page.locator('#live-counters tr[data-object="disc"] td')
    assert counters.nth(0).inner_text() == str(len(answers))
    rejected_count = sum(answer["is_anomalous"] for answer in answers)
    assert counters.nth(1).inner_text() == str(rejected_count)
    session.screenshot("live")

    page.select_option("#live-decision", "fail")
    wait_js(
        page,
        "[...document.querySelectorAll('#live-list .inspection')].every(c => c.dataset.decision === 'fail')",
    )
    assert page.locator("#live-list .inspection").count() == rejected_count
    page.select_option("#live-decision", "")


@pytest.mark.slow
def test_change_a_threshold_in_objects(session: Browser) -> None:
    page = session.page
    session.tab("objects")
    card = page.locator('.object-card[data-object="disc"]')
    card.wait_for()
    assert card.locator("canvas.histogram").count() == 1
    calibrated = session.api("GET", "/objects/disc").json()["calibrated_threshold"]
    wanted = round(calibrated + 0.5, 3)

    session.allowed_statuses = {403}
    use_key(page, CAMERA)
    card = page.locator('.object-card[data-object="disc"]')
    card.locator("#threshold-disc").fill(str(wanted))
    card.locator("button[type=submit]").click()
    alert = card.locator('[role="alert"]')
    alert.wait_for()
    wait_until(lambda: "403" in alert.inner_text(), 10, 0.1, "the 403 message")
    assert "operator" in alert.inner_text()
    assert session.api("GET", "/objects/disc").json()["threshold_source"] == "calibrated"
    session.allowed_statuses = set()

    use_key(page, OPERATOR)
    card = page.locator('.object-card[data-object="disc"]')
    card.locator("#threshold-disc").fill(str(wanted))
    card.locator("button[type=submit]").click()
    wait_until(lambda: "set to" in card.locator('[role="alert"]').inner_text(), 10, 0.1, "the confirmation")
    body = session.api("GET", "/objects/disc").json()
    assert body["threshold_source"] == "operator" and body["threshold"] == pytest.approx(wanted)
    assert card.locator(".threshold-value").inner_text() == f"{wanted:.3f}"
    session.screenshot("objects")


@pytest.mark.slow
def test_enrol_a_second_object_from_an_archive_and_roll_back(session: Browser) -> None:
    page = session.page
    session.tab("enrol")
    page.fill("#enrol-object", "ring")
    page.fill("#enrol-holdout", "0.25")
    page.set_input_files(
        "#enrol-archive", str(_archive(session.synthetic, "ring", session.base / "ring.zip"))
    )
    page.click("#enrol-submit")
    wait_js(page, "document.querySelector('#job-view .object')?.textContent === 'ring'")
    status, _ = _wait_for_job_end(session)
    assert status == "needs_review", page.inner_text("#job-view")
    job = session.api("GET", "/jobs?limit=1").json()["jobs"][0]
    guard_rows = page.locator("#job-review table.guard tbody tr")
    assert guard_rows.count() == 1 and guard_rows.first.locator("th").inner_text() == "disc"
    parent_auroc = job["forgetting_guard"]["objects"][0]["parent_auroc"]
    assert guard_rows.first.locator("td").first.inner_text() == f"{parent_auroc:.3f}"
    assert page.locator("#job-discard").is_visible()
    assert session.api("GET", "/models").json()["active"] == session.versions[0]  # not activated yet
    session.screenshot("enrol-review")
    page.click("#job-activate")
    assert page.inner_text("#job-activate") == "Click again to activate"
    page.click("#job-activate")
    wait_js(page, "document.querySelector('#job-view').textContent.includes('activated')")
    second = session.api("GET", "/models").json()["active"]
    assert second == job["version"] != session.versions[0]
    session.versions.append(second)

    session.tab("models")
    page.wait_for_selector(f'#models-table tr[data-version="{second}"].active')
    assert page.locator("#models-table tbody tr").count() == 2
    row = page.locator(f'#models-table tr[data-version="{session.versions[0]}"]')
    assert "ACTIVE" not in row.inner_text()
    assert (
        session.versions[0] in page.locator(f'#models-table tr[data-version="{second}"]').inner_text()
    )  # parent
    session.screenshot("models-before-rollback")
    button = row.locator("button")
    assert button.inner_text() == "Roll back"
    button.click()
    assert button.inner_text() == "Click again to roll back"
    button.click()
    page.wait_for_selector(f'#models-table tr[data-version="{session.versions[0]}"].active')
    wait_until(
        lambda: page.get_attribute("#serving-version", "data-version") == session.versions[0],
        20,
        0.2,
        "the header to show the rolled-back version",
    )
    assert session.api("GET", "/models").json()["active"] == session.versions[0]
    assert "is active" in page.inner_text("#models-message")
    page.wait_for_selector(f'#models-table tr[data-version="{session.versions[0]}"] .badge.info')  # serving
    session.screenshot("models")


@pytest.mark.slow
def test_mark_a_false_reject_good_in_live_and_refine_in_objects(session: Browser) -> None:
    page = session.page
    folder = session.synthetic / "disc" / "test" / "good"
    rgb, depth = read_rgb(folder / "rgb" / "001.png"), read_depth(folder / "xyz" / "001.tiff")
    response = session.api(
        "POST", "/inspect", data={"object": "disc", "threshold": "-1000"}, files=part_files(rgb, depth)
    )  # a good part failed by a threshold under any score: a false reject
    assert response.status_code == 200 and response.json()["is_anomalous"], response.text
    session.tab("live")
    page.select_option("#live-decision", "fail")
    card = page.locator("#live-list .inspection.fail").first
    wait_until(lambda: card.locator(".card-footer").count() == 1, 10, 0.1, "the newest card")
    card.locator("button.mark-good").click()
    notice = card.locator(".feedback .notice")
    wait_until(lambda: "false reject" in notice.inner_text(), 10, 0.1, "the verdict's confirmation")
    page.select_option("#live-decision", "")
    pending = session.api("GET", "/objects/disc/feedback").json()
    assert pending["counts"] == {"good": 1, "defective": 0}
    assert pending["pending"][0]["request_id"] == response.json()["request_id"]

    session.tab("objects")
    panel = page.locator('.object-card[data-object="disc"] .corrections')
    wait_until(lambda: "1 marked good" in panel.inner_text(), 15, 0.2, "the pending corrections")
    refine = panel.locator("button.refine")
    refine.click()
    assert refine.inner_text() == "Click again to refine on these corrections"
    refine.click()
    wait_until(
        lambda: (
            "Refinement queued"
            in page.locator('.object-card[data-object="disc"] [role="alert"]').inner_text()
        ),
        10,
        0.1,
        "the queued message",
    )

    def refinement() -> dict | None:
        jobs = [j for j in session.api("GET", "/jobs?limit=5").json()["jobs"] if j["kind"] == "refinement"]
        return jobs[0] if jobs and jobs[0]["status"] not in ("queued", "running") else None

    job = wait_until(refinement, 150, 0.5, "the refinement job")
    assert job["status"] == "succeeded", job["message"]  # disc is the only object after the rollback
    result = page.locator('.object-card[data-object="disc"] .refinement-result')
    wait_until(
        lambda: result.count() == 1 and "false rejects on the parts marked good" in result.inner_text(),
        20,
        0.2,
        "the before/after summary",
    )
    assert job["version"] in result.inner_text()
    wait_until(lambda: "0 marked good" in panel.inner_text(), 15, 0.2, "the used correction gone")
    session.screenshot("objects-refinement")


@pytest.mark.slow
def test_the_page_had_no_javascript_errors(session: Browser) -> None:
    page = session.page
    page.reload()
    for name in ("live", "objects", "enrol", "models"):
        session.tab(name)
        page.wait_for_timeout(300)
    assert session.errors == []
